"""Exports a local HF causal LM folder to OpenVINO IR with optimum-intel (the peer's own path).

    python benchmarks/peers/optimum_export.py MODEL_FOLDER OUT_FOLDER --weight-format int4 [--group-size 128]

Runs `optimum-cli export openvino --task text-generation-with-past` from the peer venv
(benchmarks/peers/.venv-optimum, made by optimum_intel.sh; the script re-runs itself there), offline.
OUT_FOLDER gets openvino_model.xml/.bin, the tokenizer files (and openvino_tokenizer/detokenizer
IR when openvino-tokenizers can convert it), and peer.json: versions, the exact command, time taken,
and what the IR really is (inputs, outputs, state variables, weight element types).

Quantization parameters are always passed explicitly (int4: --group-size 128, asymmetric,
ratio 1.0 unless told otherwise), so optimum-intel's per-model-id defaults table never applies;
--optimum-defaults passes none of them and lets optimum-intel choose.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_venv import ensure_peer_venv, offline_env, versions

WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")


def build_command(a: argparse.Namespace, extra: list[str]) -> list[str]:
    cli = Path(sys.executable).parent / "optimum-cli"
    cmd = [str(cli), "export", "openvino", "--model", str(a.model), "--task", "text-generation-with-past"]
    cmd += ["--library", "transformers", "--weight-format", a.weight_format]
    if a.weight_format == "int4" and not a.optimum_defaults:
        cmd += ["--group-size", str(a.group_size), "--ratio", str(a.ratio)]
        if a.sym:
            cmd.append("--sym")
        if a.all_layers:
            cmd.append("--all-layers")
        if a.group_size_fallback:
            cmd += ["--group-size-fallback", a.group_size_fallback]
    elif a.weight_format == "int8" and a.sym and not a.optimum_defaults:
        cmd.append("--sym")
    return [*cmd, *extra, str(a.out)]


def describe_ir(xml: Path) -> dict:
    """Inputs, outputs, state variables and weight element types of the exported IR."""
    import openvino as ov

    model = ov.Core().read_model(xml)

    def port(p) -> dict:
        return {
            "name": p.get_any_name(),
            "type": p.get_element_type().get_type_name(),
            "shape": str(p.get_partial_shape()),
        }

    states = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "ReadValue":
            info = op.get_variable_id() if hasattr(op, "get_variable_id") else op.get_friendly_name()
            states.append(
                {
                    "variable_id": info,
                    "type": op.get_output_element_type(0).get_type_name(),
                    "shape": str(op.get_output_partial_shape(0)),
                }
            )
    states.sort(key=lambda st: st["variable_id"])
    weights: collections.Counter[str] = collections.Counter()
    weight_elems: collections.Counter[str] = collections.Counter()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            n = 1
            for d in op.get_output_shape(0):
                n *= d
            if n >= 64:  # weights, not scalars
                t = op.get_output_element_type(0).get_type_name()
                weights[t] += 1
                weight_elems[t] += n
    return {
        "inputs": [port(p) for p in model.inputs],
        "outputs": [port(p) for p in model.outputs],
        "stateful": bool(states),
        "states": states,
        "weight_constants": dict(weights),
        "weight_elements": dict(weight_elems),
        "rt_info": _rt_info(model),
    }


def _rt_info(model) -> dict:
    """optimum's, nncf's and the runtime options optimum-intel stores in the IR (compile_model applies those)."""

    def plain(v):
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if not hasattr(v, "astype"):
            return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
        try:
            return plain(v.astype(dict))
        except Exception:
            pass
        try:
            return v.astype(str)
        except Exception:
            return str(v.value)

    out = {}
    for key in ("runtime_options", "optimum", "nncf"):
        if model.has_rt_info([key]):
            out[key] = plain(model.get_rt_info([key]))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="local HF causal LM folder (config.json, weights, tokenizer)")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--weight-format", choices=WEIGHT_FORMATS, required=True)
    p.add_argument("--group-size", type=int, default=128, help="int4 group size (-1: per channel)")
    p.add_argument("--ratio", type=float, default=1.0, help="int4: share of layers in int4 (the rest int8)")
    p.add_argument("--sym", action="store_true", help="symmetric weights (default: asymmetric, optimum's default)")
    p.add_argument("--all-layers", action="store_true", help="int4 embeddings and lm_head too (default: int8)")
    p.add_argument("--group-size-fallback", choices=("error", "ignore", "adjust"), default=None)
    p.add_argument("--optimum-defaults", action="store_true", help="pass no quantization parameters")
    a = p.parse_args(argv)
    a.model, a.out = a.model.resolve(), a.out.resolve()
    if not (a.model / "config.json").exists():
        p.error(f"{a.model} is not an HF model folder (no config.json)")

    ensure_peer_venv()
    offline_env()
    cmd = build_command(a, extra)
    print("+", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=os.environ.copy())
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"optimum-cli failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode

    xml = a.out / "openvino_model.xml"
    if not xml.exists():
        print(f"optimum-cli did not write {xml}", file=sys.stderr)
        return 1
    ov_cfg = a.out / "openvino_config.json"
    record = {
        "peer": "optimum-intel",
        "model": str(a.model),
        "weight_format": a.weight_format,
        "quantization": json.loads(ov_cfg.read_text()).get("quantization_config") if ov_cfg.exists() else None,
        "command": shlex.join(cmd),
        "env": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in os.environ},
        "export_s": round(elapsed, 2),
        "versions": versions(),
        "files": {f.name: f.stat().st_size for f in sorted(a.out.iterdir()) if f.is_file()},
        "ir": describe_ir(xml),
    }
    (a.out / "peer.json").write_text(json.dumps(record, indent=2) + "\n")
    ir = record["ir"]
    print(f"exported in {elapsed:.1f}s -> {xml}")
    print(
        "inputs:", ", ".join(i["name"] for i in ir["inputs"]), "| outputs:", ", ".join(o["name"] for o in ir["outputs"])
    )
    print(f"states: {len(ir['states'])}, weights: {ir['weight_elements']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
