"""SmolLM2-135M-Instruct decode: llama.cpp on the package's own Q4_1 GGUF against kiln's int4
artifacts of it, side by side in one run (issue 37, item 3).

    .venv/bin/python benchmarks/peers/llamacpp_smollm2.py [--build build] [--threads 2] \\
        [--targets openvino-int4 onnxruntime-int4] [--rounds 6] [--min-seconds 6] [--new-tokens 64] \\
        [--no-argmax-cell]

1. makes the llama.cpp peer venv (``llamacpp.sh``: cyllama's prebuilt wheel, which bundles
   llama.cpp; a no-op when up to date);
2. uses kiln's artifacts of examples/smollm2 in ``--build`` (``build/smollm2/<target>``), building
   the missing ones (``kiln build -o``, cached like any build);
3. times every engine through kiln's own harness pieces: each cell is a worker process driven by
   ``kiln.bench.process.WorkerProcess`` with the commands ``kiln bench`` sends
   (``kiln.bench.harness._commands``); kiln's cells are ``kiln.bench.worker`` itself, llama.cpp's
   is ``llamacpp_worker.py`` in the peer venv, which speaks the same protocol and times a
   generation the same way (the same seeded prompt ids from ``kiln.bench.worker.prompt_ids``,
   greedy, ``new_tokens`` per generation, end of sequence ignored, the same threads). Rounds
   interleave every cell, odd rounds in reverse order; the figures are
   ``kiln.bench.generation.generation_figures`` of the pooled timings, as ``kiln bench`` reports;
4. scores the gate's held-out text (the eager artifact's golden set: its ids, eager's
   perplexity) on every engine with ``kiln.decoding.perplexity``'s windows (llama.cpp: the same
   sums on its own logits of every position);
5. says where a decode step's time goes in each engine, each in a fresh process after the timed
   rounds: the runtime's own step call (``llama_decode``; OpenVINO's ``InferRequest.infer``;
   onnxruntime's ``InferenceSession.run``) against the whole step of the loop, and OpenVINO's
   per-layer profile (``PERF_COUNT``) for the LM head's share;
6. writes benchmarks/results/<fingerprint>/peers/llamacpp-smollm2.{json,md}, with the load average
   before, during (each round) and after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = ROOT / "examples" / "smollm2" / "kiln.toml"
SETTINGS = ROOT / "benchmarks" / "smollm2.toml"
KILN = Path(sys.executable).parent / "kiln"
VENV = Path(os.environ.get("LLAMACPP_VENV", HERE / ".venv-llamacpp"))
WORKER = HERE / "llamacpp_worker.py"
LLAMA = "llama.cpp Q4_1 GGUF"
LLAMA_ARGMAX = "llama.cpp Q4_1 GGUF, logits to Python"


def gguf_path() -> Path:
    from kiln.capture.sources import gguf_file
    from kiln.config import load_config

    config = load_config(CONFIG)
    return gguf_file(config.model.source, config.root)


def load_now() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the live processes ``pids`` have used so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def other_cpus(before: Any, after: Any, workers_cpu: float = 0.0) -> float | None:
    """CPUs kept busy by other processes between two ``kiln.bench.load`` snapshots: the machine's
    busy time less this process's, its waited-for children's and its live workers' (``workers_cpu``)."""
    from kiln.bench.load import machine_load

    load = machine_load(before, after)
    if load.other_cpus is None or load.timed_seconds <= 0:
        return None
    return round(max(0.0, load.other_cpus - workers_cpu / (after.wall - before.wall)), 2)


# --- the kiln side of "where the time goes" (run in a fresh process: --kiln-extras) -------------


class Timed:
    """A proxy that times one method of the object it wraps (the runtime's step call)."""

    def __init__(self, inner: Any, method: str, sink: list[float]) -> None:
        self._inner, self._method, self._sink = inner, method, sink

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self._sink.append(time.perf_counter() - start)

        return timed


def lm_head_name(xml: Path) -> str | None:
    """The friendly name of the MatMul that makes the logits (walking up from the output)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    node = model.output("logits").get_node()
    seen = 0
    while node is not None and seen < 50:
        if node.get_type_name() == "MatMul":
            return node.get_friendly_name()
        inputs = [i.get_source_output().get_node() for i in node.inputs()]
        node = next((n for n in inputs if n.get_type_name() != "Constant"), None)
        seen += 1
    return None


def openvino_profile(folder: Path, threads: int, prompt: list[int], new_tokens: int) -> dict[str, Any]:
    """OpenVINO's own per-layer times (``PERF_COUNT``) over the decode steps of one generation,
    by layer type, and the LM head's share; the runner is opened again with profiling on."""
    import openvino as ov

    from kiln.decoding import generate, session_for
    from kiln.targets.base import RunOptions
    from kiln.targets.opening import artifact_manifest, open_runner

    original = ov.Core.compile_model

    def profiled(self: Any, model: Any, device: Any = None, config: Any = None) -> Any:
        return original(self, model, device, {**(config or {}), "PERF_COUNT": True})

    ov.Core.compile_model = profiled  # type: ignore[method-assign]
    try:
        manifest = artifact_manifest(folder)
        runner = open_runner(folder, RunOptions(threads=threads), manifest)
    finally:
        ov.Core.compile_model = original  # type: ignore[method-assign]
    session = session_for(runner, manifest.signature)
    head = lm_head_name(folder / manifest.main_file)
    by_type: dict[str, float] = {}
    head_us = total_us = 0.0
    steps = 0
    records: list[Any] = []

    class Recording:
        """The request, with each infer's per-layer times kept."""

        def __init__(self, request: Any) -> None:
            self.request = request

        def __getattr__(self, name: str) -> Any:
            return getattr(self.request, name)

        def infer(self, *args: Any, **kwargs: Any) -> Any:
            out = self.request.infer(*args, **kwargs)
            records.append(self.request.get_profiling_info())
            return out

    session.request = Recording(session.request)  # type: ignore[attr-defined]
    for _ in range(2):  # the second generation is the one counted
        records.clear()
        list(generate(session, prompt, new_tokens))
    for info in records[1:]:  # decode steps only, not the prefill
        steps += 1
        for p in info:
            us = p.real_time.total_seconds() * 1e6
            by_type[p.node_type] = by_type.get(p.node_type, 0.0) + us
            total_us += us
            if head and (p.node_name == head or p.node_name.startswith(head)):
                head_us += us
    session.close()
    runner.close()
    top = sorted(by_type.items(), key=lambda kv: -kv[1])[:8]
    return {
        "steps": steps,
        "profiled_ms_per_step": total_us / steps / 1e3 if steps else None,
        "lm_head_node": head,
        "lm_head_ms_per_step": head_us / steps / 1e3 if steps else None,
        "lm_head_share": head_us / total_us if total_us else None,
        "by_layer_type_ms_per_step": {k: v / steps / 1e3 for k, v in top} if steps else {},
    }


def kiln_extras(folder: Path, ids: list[int], prompt: list[int], new_tokens: int, threads: int, runs: int) -> dict:
    """Perplexity of the held-out ids and the decode step's breakdown on one kiln artifact."""
    import itertools

    import numpy as np

    from kiln.decoding import generate, perplexity, session_for
    from kiln.targets.base import RunOptions
    from kiln.targets.opening import artifact_manifest, open_runner

    manifest = artifact_manifest(folder)
    runner = open_runner(folder, RunOptions(threads=threads), manifest)
    session = session_for(runner, manifest.signature)
    start = time.perf_counter()
    ppl = perplexity(session, ids)
    ppl_s = time.perf_counter() - start
    runtime: list[float] = []
    if hasattr(session, "request"):  # OpenVINO's stateful session: the request's infer
        session.request = Timed(session.request, "infer", runtime)
        call = "InferRequest.infer"
    else:  # the explicit cache: the runner's runtime session
        runner.session = Timed(runner.session, "run", runtime)  # type: ignore[attr-defined]
        call = f"{type(runner.session._inner).__name__}.run"  # type: ignore[attr-defined]
    feeds: list[float] = []
    feed = session.feed

    def timed_feed(tokens: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return feed(tokens)
        finally:
            feeds.append(time.perf_counter() - t0)

    session.feed = timed_feed  # type: ignore[method-assign]
    steps: list[float] = []
    step_runtime: list[float] = []
    step_feed: list[float] = []
    for r in range(runs + 1):  # the first is a warm-up
        runtime.clear()
        feeds.clear()
        marks = [time.perf_counter() for _ in generate(session, prompt, new_tokens)]
        if r:
            steps += [b - a for a, b in itertools.pairwise(marks)]
            step_runtime += runtime[1:]  # [0] is the prefill
            step_feed += feeds[1:]
    one = open_runner(folder, RunOptions(threads=1), manifest)  # threading: the same step on 1 thread
    single = session_for(one, manifest.signature)
    one_thread: list[float] = []
    for r in range(max(1, runs // 2) + 1):
        marks = [time.perf_counter() for _ in generate(single, prompt, new_tokens)]
        if r:
            one_thread += [b - a for a, b in itertools.pairwise(marks)]
    single.close()
    one.close()
    logits = np.zeros(manifest.signature.cache.vocab_size, np.float32)  # type: ignore[union-attr]
    t0 = time.perf_counter()
    for _ in range(1000):
        int(np.argmax(logits))
    argmax_ms = time.perf_counter() - t0
    session.close()
    runner.close()
    med = lambda xs: float(np.median(xs)) * 1e3  # noqa: E731
    out: dict[str, Any] = {
        "perplexity": ppl,
        "heldout_tokens": len(ids),
        "window": session.context,
        "perplexity_s": ppl_s,
        "breakdown": {
            "steps": len(steps),
            "runtime_call": call,
            "runtime_ms_p50": med(step_runtime),
            "feed_ms_p50": med(step_feed),
            "step_ms_p50": med(steps),
            "argmax_ms": argmax_ms,
            "step_ms_p50_1_thread": med(one_thread),
            "mean_step_ms": float(np.mean(steps)) * 1e3,
            "mean_runtime_ms": float(np.mean(step_runtime)) * 1e3,
        },
    }
    if manifest.target == "openvino":
        out["profile"] = openvino_profile(folder, threads, prompt, new_tokens)
    return out


# --- the run -----------------------------------------------------------------------------------


def ensure_artifacts(build: Path, targets: list[str], log: Path) -> list[Path]:
    folders = [build / "smollm2" / t for t in ["eager-fp32", *targets]]
    missing = [f for f in folders if not (f / "manifest.json").is_file()]
    if missing:
        wanted = [x for f in missing for x in ("-t", f.name.replace("-", ":", 1))]
        cmd = [str(KILN), "build", str(CONFIG), "-o", str(build), *wanted]
        print("+", " ".join(cmd), flush=True)
        with log.open("a") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        left = [str(f) for f in missing if not (f / "manifest.json").is_file()]
        if left:
            sys.exit(f"kiln build left no artifact in {', '.join(left)}: see {log}")
    return folders


def settings_for(a: argparse.Namespace) -> Any:
    from kiln.config import BenchSettings

    given = tomllib.loads(SETTINGS.read_text())["settings"]
    given = {**given, "threads": a.threads, "batches": [1], "mode": "latency", "requests": 1}
    for key in ("rounds", "min_seconds", "new_tokens", "generations", "warmup_seconds"):
        if getattr(a, key) is not None:
            given[key] = getattr(a, key)
    if a.prompt_tokens is not None:
        given["prompt_tokens"] = [a.prompt_tokens]
    return BenchSettings.model_validate(given)


def measure(cells: dict[str, tuple[str, Any]], settings: Any, progress: Any) -> dict[str, Any]:
    """Every cell in its own worker, interleaved over ``settings.rounds`` rounds."""
    from kiln.bench.generation import generation_figures
    from kiln.bench.harness import _commands
    from kiln.bench.load import snapshot, steal_between
    from kiln.bench.process import WorkerFailed, WorkerProcess
    from kiln.bench.protocol import CellSpec, GenerationSpec

    first, later = _commands(settings)
    workers: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, (artifact, launch) in cells.items():
        spec = CellSpec(
            artifact=artifact,
            batch=1,
            threads=settings.threads,
            mode="latency",
            requests=1,
            generation=GenerationSpec(prompt_tokens=settings.prompt_tokens, new_tokens=settings.new_tokens),
        )
        progress(f"starting {name}")
        try:
            workers[name] = WorkerProcess(spec, launch)
        except WorkerFailed as err:
            errors[name] = str(err)
    timings: dict[str, dict[str, Any]] = {
        n: {"ttft": {}, "itl": {}, "round_tokens_per_s": [], "warmup": 0} for n in workers
    }
    rounds: list[dict[str, Any]] = []
    pids = [w.proc.pid for w in workers.values()]
    for r in range(settings.rounds):
        before, cpu = snapshot(), cpu_seconds(pids)
        order = list(workers) if r % 2 == 0 else list(reversed(workers))
        for name in order:
            progress(f"round {r + 1}/{settings.rounds}: {name}")
            try:
                answer = workers[name].round(first if r == 0 else later)
            except WorkerFailed as err:
                errors[name] = str(err)
                continue
            t = timings[name]
            for n, xs in answer.ttft.items():
                t["ttft"].setdefault(n, []).extend(xs)
            for n, xs in answer.itl.items():
                t["itl"].setdefault(n, []).extend(xs)
            t["round_tokens_per_s"].append(len(answer.seconds) / sum(answer.seconds))
            t["warmup"] += answer.warmup_iters
        after = snapshot()
        rounds.append(
            {"order": order, "load_average": load_now(), "steal": steal_between(before, after)}
            | {"seconds": round(after.wall - before.wall, 2)}
            | {"other_cpus": other_cpus(before, after, cpu_seconds(pids) - cpu)}
        )
    out: dict[str, Any] = {"rounds": rounds, "errors": errors, "cells": {}}
    for name, w in workers.items():
        t = timings[name]
        try:
            done = w.stop()
            peak = done.peak_rss_bytes
        except WorkerFailed as err:
            errors[name] = str(err)
            peak = None
        finally:
            w.close()
        if name in errors or not t["itl"]:
            continue
        figures = generation_figures(t["ttft"], t["itl"], settings, [])
        p = figures.prompts[0]
        out["cells"][name] = {
            "ttft_p50_ms": p.ttft.p50_ms,
            "ttft_mean_ms": p.ttft.mean_ms,
            "itl_p50_ms": p.itl_p50_ms,
            "tokens_per_s": figures.tokens_per_s,
            "round_tokens_per_s": t["round_tokens_per_s"],
            "generations": figures.generations,
            "decode_steps": sum(len(v) for v in t["itl"].values()),
            "warmup_generations": t["warmup"],
            "load_s": w.ready.load_s,
            "first_ms": w.ready.first_ms,
            "peak_rss_bytes": peak,
            "runtime": w.ready.info.model_dump(),
        }
    return out


def table(rec: dict[str, Any]) -> str:
    s = rec["settings"]
    ppl = rec["perplexity"]
    lines = [
        f"# SmolLM2-135M-Instruct decode: llama.cpp against kiln's int4 ({rec['fingerprint']})",
        "",
        f"One run, every engine in its own worker process, {s['rounds']} interleaved rounds (odd rounds reversed): "
        f"greedy, batch 1, {s['threads']} threads, the same seeded prompt of {s['prompt_tokens'][0]} token ids, "
        f"{s['new_tokens']} new tokens per generation (end of sequence ignored), >= {s['generations']} generations "
        f"and >= {s['min_seconds']} s timed per engine, after warm-up. kiln's cells are `kiln.bench.worker`; "
        f"llama.cpp's (`{rec['versions']['llama_cpp']}` from cyllama {rec['versions']['cyllama']}'s wheel) "
        "speaks the same protocol and times a generation the same way. Perplexity: the gate's held-out text "
        f"({ppl['heldout_tokens']} tokens, windows of {ppl['window']}; eager fp32 of the dequantized GGUF "
        f"{ppl['eager_gate']:.2f}). Made by `benchmarks/peers/llamacpp_smollm2.py`; all figures in "
        "llamacpp-smollm2.json.",
        "",
        f"| engine | TTFT@{s['prompt_tokens'][0]} p50 ms | ITL p50 ms | decode tok/s | tok/s per round | "
        "perplexity | vs eager | peak RSS MB |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, c in rec["timing"]["cells"].items():
        p = ppl["engines"].get(name)
        rss = f"{c['peak_rss_bytes'] / 1e6:.0f}" if c.get("peak_rss_bytes") else "-"
        per_round = ", ".join(f"{x:.1f}" for x in c["round_tokens_per_s"])
        lines.append(
            f"| {name} | {c['ttft_p50_ms']:.1f} | {c['itl_p50_ms']:.2f} | {c['tokens_per_s']:.1f} | {per_round} | "
            + (f"{p:.3f} | {p / ppl['eager_gate'] - 1:+.2%}" if p is not None else "- | -")
            + f" | {rss} |"
        )
    for name, err in rec["timing"]["errors"].items():
        lines.append(f"| {name} | failed: {err} | | | | | | |")
    load = rec["load"]
    lines += [
        "",
        f"Load average (1, 5, 15 min; this run's own workers count in it): before {load['before']}, after each "
        f"round {[r['load_average'][0] for r in rec['timing']['rounds']]}, after {load['after']}. CPUs other "
        f"processes kept busy (/proc/stat less this run's processes): before {load['other_cpus_before']}, per round "
        f"{[r['other_cpus'] for r in rec['timing']['rounds']]}, during the breakdowns "
        f"{list(load['other_cpus_breakdown'].values())}.",
    ]
    v = rec.get("verdict")
    if v:
        lines += ["", v["line"]]
    lines += ["", "## Where a decode step's time goes", ""]
    lines += [
        "Each engine in a fresh process after the timed rounds; medians over the decode steps of "
        f"{rec['breakdown_runs']} generations (one more as warm-up).",
        "",
        "| engine | whole step ms | runtime's step call ms | outside the call ms | what the call is | "
        "step ms on 1 thread | 2-thread speed-up |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for name, b in rec["breakdown"].items():
        if "step_ms_p50" not in b:
            continue
        runtime = b.get("runtime_ms_p50", b.get("decode_ms_p50"))
        call = b.get("runtime_call", "llama_decode")
        lines.append(
            f"| {name} | {b['step_ms_p50']:.2f} | {runtime:.2f} | {b['step_ms_p50'] - runtime:.2f} | {call} | "
            f"{b['step_ms_p50_1_thread']:.2f} | {b['step_ms_p50_1_thread'] / b['step_ms_p50']:.2f}x |"
        )
    for line in rec.get("where", []):
        lines.append(f"- {line}")
    lines.append("")
    return "\n".join(lines)


def where_lines(rec: dict[str, Any]) -> list[str]:
    """The measured breakdown in words."""
    out = []
    b = rec["breakdown"]
    llama = b.get(LLAMA)
    if llama:
        out.append(
            f"llama.cpp: `llama_decode` {llama['decode_ms_p50']:.2f} ms of a {llama['step_ms_p50']:.2f} ms step; its "
            f"greedy sampler (C) {llama['greedy_sampler_ms_p50'] * 1e3:.0f} us. Copying the logits into Python "
            f"(cyllama's list of {rec['vocab']} floats) and numpy's argmax instead would add "
            f"{llama['logits_to_python_argmax_ms_p50']:.2f} ms a step (the `{LLAMA_ARGMAX}` row)."
        )
    for name, k in b.items():
        if name == LLAMA or "runtime_ms_p50" not in k:
            continue
        loop = k["step_ms_p50"] - k["runtime_ms_p50"]
        out.append(
            f"{name}: the runtime's {k['runtime_call']} {k['runtime_ms_p50']:.2f} ms of a {k['step_ms_p50']:.2f} ms "
            f"step; kiln's loop around it (feed's arrays, the logits copy, numpy's argmax "
            f"{k['argmax_ms'] * 1e3:.0f} us, the generator) {loop:.2f} ms ({loop / k['step_ms_p50']:.0%})."
        )
        prof = rec["breakdown"][name].get("profile")
        if prof and prof.get("lm_head_ms_per_step") is not None:
            types = ", ".join(f"{t} {ms:.2f}" for t, ms in list(prof["by_layer_type_ms_per_step"].items())[:5])
            out.append(
                f"{name} per-layer profile (PERF_COUNT, {prof['profiled_ms_per_step']:.2f} ms a step as profiled): "
                f"LM head `{prof['lm_head_node']}` {prof['lm_head_ms_per_step']:.2f} ms "
                f"({prof['lm_head_share']:.0%}); by layer type (ms): {types}."
            )
        if llama:
            gap = k["runtime_ms_p50"] - llama["decode_ms_p50"]
            out.append(
                f"{name} against llama.cpp: runtime call {gap:+.2f} ms a step, kiln's loop "
                f"{loop - (llama['step_ms_p50'] - llama['decode_ms_p50']):+.2f} ms a step."
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", type=Path, default=ROOT / "build", help="kiln build folder (-o) holding smollm2/")
    p.add_argument("--targets", nargs="*", default=["openvino-int4", "onnxruntime-int4"])
    p.add_argument("--threads", type=int, default=2)
    # More than benchmarks/smollm2.toml's 2 rounds x 2 s: a head-to-head verdict wants per-round ratios.
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    p.add_argument("--min-seconds", type=float, default=6.0, help="timed seconds per engine, over all rounds")
    p.add_argument("--generations", type=int, default=None)
    p.add_argument("--warmup-seconds", type=float, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--prompt-tokens", type=int, default=None)
    p.add_argument("--breakdown-runs", type=int, default=5, help="generations per engine for the breakdown")
    p.add_argument("--no-argmax-cell", action="store_true", help="leave out llama.cpp with logits into Python")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<fp>/peers)")
    p.add_argument("--kiln-extras", type=Path, help=argparse.SUPPRESS)  # internal: one artifact's extras
    p.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--prompts", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.kiln_extras:
        ids = json.loads(a.ids.read_text())
        prompt = next(iter(json.loads(a.prompts.read_text()).values()))
        result = kiln_extras(a.kiln_extras, ids, prompt, a.new_tokens or 64, a.threads, a.breakdown_runs)
        print(json.dumps(result))
        return 0

    from kiln.bench.load import quiet_now, snapshot
    from kiln.bench.process import Launch, malloc_environment
    from kiln.bench.worker import prompt_ids
    from kiln.gate.golden import GoldenSet
    from kiln.manifest import Manifest
    from kiln.targets import fingerprint

    fp = fingerprint()
    out = a.out or ROOT / "benchmarks" / "results" / fp.id / "peers"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "llamacpp-smollm2.log"
    log.write_text("")
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"   {msg}", file=sys.stderr, flush=True)

    with log.open("a") as f:
        if subprocess.run(["bash", str(HERE / "llamacpp.sh")], stdout=f, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"the llama.cpp peer venv failed: see {log}")
    versions = json.loads((VENV / "versions.json").read_text())
    eager, *folders = ensure_artifacts(a.build, a.targets, log)
    gguf = gguf_path()
    settings = settings_for(a)
    manifest = Manifest.model_validate_json((folders[0] / "manifest.json").read_text())
    cache = manifest.signature.cache
    assert cache is not None
    vocab, window = cache.vocab_size, manifest.signature.context_length()
    prompts = {n: prompt_ids(vocab, n, 0) for n in settings.prompt_tokens}
    heldout = GoldenSet.read(eager).eager_generation().heldout
    work = Path(tempfile.mkdtemp(prefix="llamacpp-smollm2-"))  # the ids the workers read
    (work / "prompts.json").write_text(json.dumps({str(n): ids for n, ids in prompts.items()}))
    (work / "heldout.json").write_text(json.dumps(heldout.ids))

    py = str(VENV / "bin" / "python")
    env = malloc_environment(settings.malloc)
    llama_cmd = (py, str(WORKER), "serve", "--prompts", str(work / "prompts.json"))
    cells: dict[str, tuple[str, Any]] = {LLAMA: (str(gguf), Launch(command=llama_cmd, env=env))}
    if not a.no_argmax_cell:
        cells[LLAMA_ARGMAX] = (str(gguf), Launch(command=(*llama_cmd, "--argmax"), env=env))
    for folder in folders:
        cells[f"kiln {folder.name}"] = (str(folder), Launch(env=env))

    load_before = load_now()
    idle = quiet_now(2.0).other_cpus  # nothing of this run is busy yet
    progress(f"load average before: {load_before}; other processes kept {idle} CPUs busy")
    timing = measure(cells, settings, progress)
    load_after_timing = load_now()

    # Perplexity and the breakdown, each engine in a fresh process, after the timed rounds.
    progress("perplexity and breakdown: llama.cpp")
    extras_cmd = [py, str(WORKER), "extras", str(gguf), "--ids", str(work / "heldout.json"), "--window", str(window)]
    extras_cmd += ["--prompts", str(work / "prompts.json"), "--new-tokens", str(settings.new_tokens)]
    extras_cmd += ["--threads", str(a.threads), "--generations", str(a.breakdown_runs)]
    extras_load: dict[str, float | None] = {}
    before = snapshot()
    with log.open("a") as f:
        done = subprocess.run(extras_cmd, stdout=subprocess.PIPE, stderr=f, text=True)
    extras_load[LLAMA] = other_cpus(before, snapshot())
    if done.returncode:
        sys.exit(f"llamacpp_worker.py extras exited {done.returncode}: see {log}")
    llama_extras = json.loads(done.stdout)
    breakdown: dict[str, Any] = {LLAMA: llama_extras["breakdown"]}
    ppl: dict[str, float | None] = {LLAMA: llama_extras["perplexity"], LLAMA_ARGMAX: llama_extras["perplexity"]}
    for folder in folders:
        name = f"kiln {folder.name}"
        progress(f"perplexity and breakdown: {name}")
        cmd = [sys.executable, str(Path(__file__)), "--kiln-extras", str(folder), "--ids", str(work / "heldout.json")]
        cmd += ["--prompts", str(work / "prompts.json"), "--new-tokens", str(settings.new_tokens)]
        cmd += ["--threads", str(a.threads), "--breakdown-runs", str(a.breakdown_runs)]
        before = snapshot()
        with log.open("a") as f:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, cwd=ROOT)
        extras_load[name] = other_cpus(before, snapshot())
        if done.returncode:
            print(f"{name}: extras exited {done.returncode}: see {log}", file=sys.stderr)
            ppl[name] = None
            continue
        extras = json.loads(done.stdout)
        ppl[name] = extras["perplexity"]
        breakdown[name] = {**extras["breakdown"], **({"profile": extras["profile"]} if "profile" in extras else {})}

    record: dict[str, Any] = {
        "fingerprint": fp.id,
        "cpu": fp.cpu,
        "model": "SmolLM2-135M-Instruct",
        "gguf": str(gguf),
        "kiln_artifacts": [str(f) for f in folders],
        "versions": versions,
        "settings": settings.model_dump(mode="json"),
        "vocab": vocab,
        "prompt_ids": prompts,
        "load": {
            "before": load_before,
            "other_cpus_before": idle,
            "after_timing": load_after_timing,
            "after": load_now(),
            "other_cpus_breakdown": extras_load,
        },
        "timing": timing,
        "perplexity": {
            "heldout_tokens": len(heldout.ids),
            "window": window,
            "eager_gate": heldout.perplexity,
            "engines": ppl,
        },
        "breakdown_runs": a.breakdown_runs,
        "breakdown": breakdown,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    kiln_cells = {n: c for n, c in timing["cells"].items() if n.startswith("kiln ")}
    if LLAMA in timing["cells"] and kiln_cells:
        best = max(kiln_cells, key=lambda n: kiln_cells[n]["tokens_per_s"])
        k, ll = kiln_cells[best]["tokens_per_s"], timing["cells"][LLAMA]["tokens_per_s"]
        ahead = "at or ahead of" if k >= ll else "behind"
        per_round = [
            x / y
            for x, y in zip(
                kiln_cells[best]["round_tokens_per_s"], timing["cells"][LLAMA]["round_tokens_per_s"], strict=False
            )
        ]
        record["verdict"] = {
            "fastest_kiln": best,
            "kiln_tokens_per_s": k,
            "llama_cpp_tokens_per_s": ll,
            "ratio": k / ll,
            "round_ratios": per_round,
            "line": f"Decode: kiln's fastest int4 ({best}, {k:.1f} tok/s) is {ahead} llama.cpp ({ll:.1f} tok/s): "
            f"{k / ll:.2f}x (per round {min(per_round):.2f}x to {max(per_round):.2f}x).",
        }
    record["where"] = where_lines(record)
    shutil.rmtree(work, ignore_errors=True)
    (out / "llamacpp-smollm2.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "llamacpp-smollm2.md").write_text(table(record))
    print(table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
