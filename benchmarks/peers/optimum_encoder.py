"""Exports a local HF encoder folder (feature extraction) to OpenVINO IR with optimum-intel, the
ways its users make fp32 and int8 encoders:

    python benchmarks/peers/optimum_encoder.py MODEL_FOLDER OUT_ROOT --calibration calib.npz

writes three IR folders under OUT_ROOT, each with ``openvino_model.xml/.bin`` and ``peer.json``:

- ``fp32/``: ``optimum-cli export openvino --task feature-extraction --weight-format fp32``;
- ``int8-weights/``: ``optimum-cli ... --weight-format int8``: what ``int8`` means on the optimum-cli
  command line (8-bit asymmetric weights, per output channel; activations stay float);
- ``int8-static/``: full static int8 (weights and activations), what optimum-intel's docs call
  quantization for encoders: ``OVQuantizer.from_pretrained(model).quantize(calibration_dataset=...,
  ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples=N)))`` with its defaults
  (``model_type="transformer"``, asymmetric activations, fast bias correction). ``optimum-cli
  --quant-mode int8`` does the same but only with a dataset from the hub (``--dataset``), which is
  unreachable offline, so the Python API is fed the calibration samples kiln used (the .npz:
  one array per input, samples stacked on axis 0, each sample keeping its batch axis of 1).

Runs in the peer venv (benchmarks/peers/.venv-optimum, made by optimum_intel.sh; the script re-runs
itself there), offline.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_venv import ensure_peer_venv, offline_env, versions

VARIANTS = ("fp32", "int8-weights", "int8-static")


def cli_export(model: Path, out: Path, weight_format: str) -> dict:
    cli = Path(sys.executable).parent / "optimum-cli"
    cmd = [str(cli), "export", "openvino", "--model", str(model), "--task", "feature-extraction"]
    # --library transformers: the folder also holds sentence-transformers files (modules.json),
    # which would make optimum-cli ask for the sentence-transformers package.
    cmd += ["--library", "transformers", "--weight-format", weight_format, str(out)]
    print("+", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return {"command": shlex.join(cmd), "export_s": round(time.perf_counter() - start, 2)}


def static_int8(fp32: Path, out: Path, calibration: Path) -> dict:
    import nncf
    import numpy as np
    from optimum.intel import OVConfig, OVModelForFeatureExtraction, OVQuantizationConfig, OVQuantizer

    with np.load(calibration) as data:
        arrays = {k: data[k] for k in data.files}
    count = len(next(iter(arrays.values())))
    model = OVModelForFeatureExtraction.from_pretrained(fp32, compile=False)
    names = {p.get_any_name() for p in model.model.inputs}
    samples = [{k: v[i : i + 1] for k, v in arrays.items() if k in names} for i in range(count)]
    config = OVQuantizationConfig(num_samples=count)
    start = time.perf_counter()
    OVQuantizer.from_pretrained(model).quantize(
        calibration_dataset=nncf.Dataset(samples), ov_config=OVConfig(quantization_config=config), save_directory=out
    )
    return {
        "command": f"OVQuantizer.quantize(calibration_dataset=nncf.Dataset({count} samples from {calibration.name}), "
        f"ov_config=OVConfig(quantization_config=OVQuantizationConfig(num_samples={count})))",
        "quantization_config": config.to_dict(),
        "export_s": round(time.perf_counter() - start, 2),
        "calibration_samples": count,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="local HF encoder folder (config.json, weights, tokenizer)")
    p.add_argument("out", type=Path, help="output root: gets fp32/, int8-weights/, int8-static/")
    p.add_argument("--calibration", type=Path, required=True, help=".npz of calibration inputs (int8-static)")
    p.add_argument("--only", choices=VARIANTS, action="append", help="make only these (repeatable)")
    p.add_argument("--force", action="store_true", help="re-export folders that already hold a peer.json")
    a = p.parse_args(argv)
    a.model, a.out, a.calibration = a.model.resolve(), a.out.resolve(), a.calibration.resolve()
    if not (a.model / "config.json").exists():
        p.error(f"{a.model} is not an HF model folder (no config.json)")

    ensure_peer_venv()
    offline_env()
    from optimum_export import describe_ir

    for variant in a.only or VARIANTS:
        out = a.out / variant
        if (out / "peer.json").exists() and not a.force:
            print(f"{out} is there (peer.json); --force re-exports it")
            continue
        if variant == "int8-static":
            if not (a.out / "fp32" / "openvino_model.xml").exists():
                cli_export(a.model, a.out / "fp32", "fp32")
            record = static_int8(a.out / "fp32", out, a.calibration)
        else:
            record = cli_export(a.model, out, "fp32" if variant == "fp32" else "int8")
        record = {
            "peer": "optimum-intel",
            "variant": variant,
            "model": str(a.model),
            **record,
            "versions": versions(),
            "files": {f.name: f.stat().st_size for f in sorted(out.iterdir()) if f.is_file()},
            "ir": describe_ir(out / "openvino_model.xml"),
        }
        (out / "peer.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"{variant}: {out} ({record['export_s']} s), weights {record['ir']['weight_elements']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
