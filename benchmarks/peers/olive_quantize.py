"""Quantizes an ONNX model to ONNX Runtime static int8 with Olive, the way its users would:

    python benchmarks/peers/olive_quantize.py MODEL.onnx OUT_FOLDER --calibration calib.npz [--recipe static|bert]

- ``static``: one ``OnnxStaticQuantization`` pass with Olive's defaults (QDQ, int8 weights per
  tensor, int8 activations, MinMax, ``quant_preprocess``, ``prepare_qdq_config``: every op ORT can
  quantize);
- ``bert``: Olive's BERT-on-CPU recipe (``examples/bert`` in the Olive repo): ``OrtTransformersOptimization``
  (``model_type="bert"``: ORT's fused Attention, SkipLayerNormalization, BiasGelu) and then the same
  ``OnnxStaticQuantization``.

Calibration is the .npz of the samples kiln used (one array per input, samples stacked on axis 0),
fed through an Olive user script (``_olive_data.py``). OUT_FOLDER gets ``model.onnx`` and
``peer.json`` (the workflow config, versions, time, quantized op counts). Runs in the peer venv
(benchmarks/peers/.venv-olive, made by olive.sh; the script re-runs itself there), offline.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_venv import HERE, ensure_venv, offline_env

VENV = HERE / ".venv-olive"
PACKAGES = ["olive-ai", "onnxruntime", "onnx", "onnxscript", "torch", "transformers", "numpy"]


def workflow(model: Path, calibration: Path, recipe: str, out: Path, options: dict) -> dict:
    passes: dict = {}
    if recipe == "bert":
        passes["transformers_optimization"] = {"type": "OrtTransformersOptimization", "model_type": "bert"}
    passes["quantization"] = {"type": "OnnxStaticQuantization", "data_config": "calibration", **options}
    return {
        "input_model": {"type": "ONNXModel", "model_path": str(model)},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        "data_configs": [
            {
                "name": "calibration",
                "user_script": str(HERE / "_olive_data.py"),
                "load_dataset_config": {"type": "kiln_npz_dataset", "params": {"path": str(calibration)}},
                "dataloader_config": {"batch_size": 1},
            }
        ],
        "passes": passes,
        "host": "local_system",
        "target": "local_system",
        "output_dir": str(out),
        "cache_dir": str(out / "cache"),
        "log_severity_level": 3,
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = sys.version.split()[0]
    return out


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    ops = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return dict(sorted(ops.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="the fp32 ONNX file (kiln's export/model.onnx)")
    p.add_argument("out", type=Path, help="output folder: model.onnx + peer.json")
    p.add_argument("--calibration", type=Path, required=True, help=".npz of calibration inputs")
    p.add_argument("--recipe", choices=("static", "bert"), default="static")
    p.add_argument("--option", action="append", default=[], help="KEY=JSON for the quantization pass")
    p.add_argument("--force", action="store_true", help="re-quantize when OUT/peer.json exists")
    a = p.parse_args(argv)
    a.model, a.out, a.calibration = a.model.resolve(), a.out.resolve(), a.calibration.resolve()
    if (a.out / "peer.json").exists() and not a.force:
        print(f"{a.out} is there (peer.json); --force re-quantizes")
        return 0
    # Olive sends a telemetry heartbeat at import unless it believes it runs in CI; nothing here
    # may reach the network, so both of its switches are set before the first import.
    os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("CI", "1")
    ensure_venv("olive", VENV, "olive.sh")
    offline_env()
    from olive.workflows import run as olive_run

    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in a.option)}
    with tempfile.TemporaryDirectory(prefix="olive-") as tmp:
        config = workflow(a.model, a.calibration, a.recipe, Path(tmp), options)
        start = time.perf_counter()
        olive_run(copy.deepcopy(config))  # Olive turns parts of the dict into its own objects
        seconds = time.perf_counter() - start
        found = sorted(Path(tmp).rglob("*.onnx"), key=lambda f: f.stat().st_mtime)
        found = [f for f in found if "cache" not in f.relative_to(tmp).parts] or found
        if not found:
            print(f"Olive wrote no .onnx under {tmp}", file=sys.stderr)
            return 1
        staging = a.out.with_name(a.out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        src = found[-1]
        import onnx

        # One self-contained file (Olive saves weights as external data): the model is < 2 GB.
        onnx.save(onnx.load(str(src)), str(staging / "model.onnx"))
        record = {
            "peer": "olive",
            "recipe": a.recipe,
            "model": str(a.model),
            "calibration": str(a.calibration),
            "workflow": {k: v for k, v in config.items() if k not in ("output_dir", "cache_dir")},
            "olive_output": str(src.relative_to(tmp)),
            "quantize_s": round(seconds, 2),
            "versions": versions(),
            "ops": op_counts(staging / "model.onnx"),
            "files": {f.name: f.stat().st_size for f in sorted(staging.iterdir())},
        }
        (staging / "peer.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        shutil.rmtree(a.out, ignore_errors=True)
        staging.replace(a.out)
    print(f"olive {a.recipe}: {a.out / 'model.onnx'} in {seconds:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
