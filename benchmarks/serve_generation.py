"""Load-test ``kiln serve`` on a causal LM over the OpenAI-compatible API: TTFT and inter-token
latency (p50/p99), output tokens/s per request and in total, and errors, at several concurrencies;
beside them the same generations called directly in-process (``kiln.decoding.generate``, one at a
time, no HTTP), so the server's overhead is a ratio.

    python benchmarks/serve_generation.py build/tinyllm/onnxruntime-fp32 [--concurrency 1,4,16]
        [--requests 32] [--prompt-tokens 8,48] [--output-tokens 16,48] [--seed 0] [--rounds 3]
        [--threads 1] [--engine auto|kiln|openvino-genai] [--results benchmarks/results]

The workload is seeded: each request's prompt is a window of the calibration text's tokens
(``kiln.decoding.CALIBRATION_TEXT``, sent as token ids) and its output length is drawn in
``--output-tokens``; decoding is greedy with ``ignore_eos``, so every request generates exactly
its length. One server (``python -m kiln.cli serve ARTIFACT --port 0 --max-active <largest
concurrency>``) takes every level after a warm-up; N client threads each stream requests
(``stream: true`` with the usage chunk) until the level's requests are done. TTFT is the client's
(request sent to the first chunk with text), the inter-token latency the gap between chunks.
Clients and server share the machine's cores, so the figures are as much about the clients as the
server: the fingerprint and load average are recorded beside them. Results go to
``<results>/<fingerprint>/serve-generation/<model>-<target dir>-<engine>.{json,md}``.

``--engine`` is kiln serve's (auto: OpenVINO GenAI's continuous batching on an OpenVINO GenAI
folder, kiln's step scheduler otherwise); with ``openvino-genai`` the direct run is the
``ContinuousBatchingPipeline`` itself, configured as the server's, one request at a time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"at http://[^:]+:(\d+)/v1 ")
START_SECONDS = 300


@dataclass(frozen=True)
class Job:
    prompt: list[int]
    tokens: int


@dataclass
class Done:
    ttft: float  # seconds
    gaps: list[float]  # between chunks
    tokens: int
    seconds: float  # request sent to the last byte
    error: str | None = None


@dataclass
class Level:
    name: str  # "c4" or "direct"
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    tokens_per_s_per_request: float  # mean over requests: its tokens / its time
    tokens_per_s_total: float  # every token of the level / its wall time
    output_tokens: int


def workload(
    folder: Path, n: int, prompt_range: tuple[int, int], output_range: tuple[int, int], seed: int
) -> list[Job]:
    from kiln.decoding import CALIBRATION_TEXT
    from kiln.targets.opening import artifact_tokenizer

    text = artifact_tokenizer(folder).encode(CALIBRATION_TEXT, add_special_tokens=False)
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(n):
        length = int(rng.integers(prompt_range[0], prompt_range[1] + 1))
        start = int(rng.integers(0, len(text) - length))
        jobs.append(Job(text[start : start + length], int(rng.integers(output_range[0], output_range[1] + 1))))
    return jobs


def stream(port: int, model: str, job: Job) -> Done:
    """One streaming completion, timed chunk by chunk."""
    body = {
        "model": model,
        "prompt": job.prompt,
        "max_tokens": job.tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            return Done(0, [], 0, time.perf_counter() - start, f"{response.status}: {response.read()[:200]!r}")
        for line in response:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            data = json.loads(line[6:])
            if data.get("error"):
                return Done(0, [], 0, time.perf_counter() - start, str(data["error"])[:200])
            if data["choices"] and data["choices"][0]["text"]:
                stamps.append(time.perf_counter())
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
    except OSError as err:
        return Done(0, [], 0, time.perf_counter() - start, f"{type(err).__name__}: {err}")
    finally:
        conn.close()
    end = time.perf_counter()
    if not stamps:
        return Done(0, [], tokens, end - start, "no text came back")
    return Done(stamps[0] - start, list(np.diff(stamps)), tokens, end - start)


def run_level(port: int, model: str, jobs: list[Job], concurrency: int) -> tuple[list[Done], float]:
    results: list[Done | None] = [None] * len(jobs)
    lock = threading.Lock()
    cursor = iter(range(len(jobs)))

    def client() -> None:
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            results[i] = stream(port, model, jobs[i])

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None], time.perf_counter() - start


def direct(folder: Path, jobs: list[Job], threads: int | None) -> tuple[list[Done], float]:
    """The same generations through kiln's own decoding loop, one at a time, in this process."""
    from kiln.decoding import generate
    from kiln.targets.base import RunOptions
    from kiln.targets.opening import open_session

    done = []
    with open_session(folder, RunOptions(threads=threads)) as session:
        list(generate(session, jobs[0].prompt, 2))  # warm-up
        start = time.perf_counter()
        for job in jobs:
            begin = time.perf_counter()
            stamps = []
            for _ in generate(session, job.prompt, job.tokens):
                stamps.append(time.perf_counter())
            done.append(Done(stamps[0] - begin, list(np.diff(stamps)), len(stamps), stamps[-1] - begin))
        return done, time.perf_counter() - start


def direct_genai(folder: Path, jobs: list[Job], threads: int | None) -> tuple[list[Done], float]:
    """The same generations on OpenVINO GenAI's ContinuousBatchingPipeline in this process, one at
    a time, configured as kiln serve's openvino-genai engine configures it (no HTTP, no kiln)."""
    import openvino as ov
    import openvino_genai as og

    from kiln.manifest import Manifest
    from kiln.serve.genai_engine import F32, scheduler_config

    properties: dict[str, Any] = dict(F32) | ({"INFERENCE_NUM_THREADS": threads} if threads else {})
    context = Manifest.read(folder).signature.context_length()
    pipe = og.ContinuousBatchingPipeline(str(folder), scheduler_config(og, context, 1), "CPU", properties)

    def run(job: Job) -> list[float]:
        config = og.GenerationConfig()
        config.max_new_tokens, config.ignore_eos, config.do_sample = job.tokens, True, False
        handle = pipe.add_request(0, ov.Tensor(np.asarray([job.prompt], dtype=np.int64)), config)
        stamps: list[float] = []
        while pipe.has_non_finished_requests():
            pipe.step()
            while handle.can_read():
                for out in handle.read().values():
                    stamps += [time.perf_counter()] * len(out.generated_ids)
        return stamps

    run(Job(jobs[0].prompt, 2))  # warm-up
    done = []
    start = time.perf_counter()
    for job in jobs:
        begin = time.perf_counter()
        stamps = run(job)
        done.append(Done(stamps[0] - begin, list(np.diff(stamps)), len(stamps), stamps[-1] - begin))
    return done, time.perf_counter() - start


def summarize(name: str, concurrency: int, done: list[Done], wall: float) -> Level:
    ok = [d for d in done if d.error is None]
    ttft = np.array([d.ttft for d in ok]) * 1000 if ok else np.array([np.nan])
    gaps = np.array([g for d in ok for g in d.gaps]) * 1000
    gaps = gaps if gaps.size else np.array([np.nan])
    tokens = sum(d.tokens for d in ok)
    return Level(
        name=name,
        concurrency=concurrency,
        requests=len(done),
        errors=len(done) - len(ok),
        wall_s=round(wall, 3),
        ttft_p50_ms=round(float(np.percentile(ttft, 50)), 2),
        ttft_p99_ms=round(float(np.percentile(ttft, 99)), 2),
        itl_p50_ms=round(float(np.percentile(gaps, 50)), 3),
        itl_p99_ms=round(float(np.percentile(gaps, 99)), 3),
        tokens_per_s_per_request=round(float(np.mean([d.tokens / d.seconds for d in ok])) if ok else 0.0, 1),
        tokens_per_s_total=round(tokens / wall, 1),
        output_tokens=tokens,
    )


def start_server(artifact: Path, flags: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    cmd = [sys.executable, "-m", "kiln.cli", "serve", str(artifact), "--port", "0", *flags]
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            sys.exit(f"kiln serve exited {proc.returncode}: {log.read_text()}")
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"kiln serve was not ready within {START_SECONDS} s: {log.read_text()}")


def table(levels: list[Level], meta: dict[str, Any]) -> str:
    base = next(lv for lv in levels if lv.name == "direct")
    head = (
        "| run | concurrency | requests | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | tok/s per request "
        "| tok/s total | total vs direct | errors |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in levels:
        direct_label = (
            "direct: the pipeline in-process, one at a time"
            if meta.get("engine") == "openvino-genai"
            else ("direct (in-process, no HTTP)")
        )
        label = direct_label if lv.name == "direct" else "kiln serve"
        lines.append(
            f"| {label} | {lv.concurrency} | {lv.requests} | {lv.ttft_p50_ms:.2f} | {lv.ttft_p99_ms:.2f} | "
            f"{lv.itl_p50_ms:.3f} | {lv.itl_p99_ms:.3f} | {lv.tokens_per_s_per_request:.0f} | "
            f"{lv.tokens_per_s_total:.0f} | {lv.tokens_per_s_total / base.tokens_per_s_total:.2f}x | {lv.errors} |"
        )
    fp = meta["fingerprint"]
    lines += [
        "",
        f"`kiln serve {meta['artifact']} --engine {meta.get('engine', 'kiln')}` ({meta['target']}, "
        f"{meta['threads']} runtime threads, "
        f"--max-active {meta['max_active']}); {meta['requests']} streaming completions per level and round, "
        f"{meta['rounds']} interleaved rounds (the direct run in each), prompts of "
        f"{meta['prompt_tokens'][0]}-{meta['prompt_tokens'][1]} tokens and outputs of {meta['output_tokens'][0]}-"
        f"{meta['output_tokens'][1]} (seed {meta['seed']}, greedy, ignore_eos); the direct run decodes the same "
        "requests one at a time with kiln.decoding.generate (kiln engine) or on OpenVINO GenAI's "
        "ContinuousBatchingPipeline configured as the server's (openvino-genai engine).  ",
        f"Machine `{fp['id']}`: {fp['cpu']}, {fp['logical_cores']} logical cores, load average "
        f"{meta['load_average_before']} before and {meta['load_average_after']} after; clients and server share "
        "the cores, and the machine is shared: indicative figures.",
    ]
    return "\n".join(lines) + "\n"


def _range(text: str) -> tuple[int, int]:
    low, high = (int(v) for v in text.split(","))
    return low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path, help="A causal LM's artifact folder (build/tinyllm/onnxruntime-fp32).")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=32, help="Requests per level.")
    parser.add_argument("--prompt-tokens", type=_range, default=(8, 48), help="LOW,HIGH")
    parser.add_argument("--output-tokens", type=_range, default=(16, 48), help="LOW,HIGH")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of every run.")
    parser.add_argument("--threads", type=int, default=1, help="Runtime threads (0: the runtime's default).")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--engine", default="auto", help="kiln serve's --engine (auto, kiln, openvino-genai); the direct run matches it"
    )
    args = parser.parse_args()

    from kiln.manifest import Manifest
    from kiln.store import write_json
    from kiln.targets import fingerprint

    if not (args.artifact / "manifest.json").is_file():
        sys.exit(f"{args.artifact} is not an artifact folder; build it with kiln build (make tinyllm first)")
    manifest = Manifest.read(args.artifact)
    from kiln.serve.llm import engine_for

    engine = engine_for(args.artifact, manifest, args.engine)
    baseline = direct_genai if engine == "openvino-genai" else direct
    levels = [int(c) for c in args.concurrency.split(",")]
    jobs = workload(args.artifact, args.requests, args.prompt_tokens, args.output_tokens, args.seed)
    threads = args.threads or None
    fp = fingerprint()
    load_before = [round(v, 2) for v in os.getloadavg()]
    flags = ["--max-active", str(max(levels)), "--max-queue", str(args.requests), "--engine", engine]
    flags += ["--threads", str(args.threads)] if args.threads else []
    runs: dict[int, tuple[list[Done], float]] = {c: ([], 0.0) for c in [0, *levels]}  # 0: direct

    def add(c: int, done: list[Done], wall: float) -> None:
        runs[c] = (runs[c][0] + done, runs[c][1] + wall)

    with tempfile.TemporaryDirectory(prefix="kiln-serve-generation-") as scratch:
        proc, port = start_server(args.artifact, flags, Path(scratch) / "serve.log")
        try:
            model = args.artifact.name
            run_level(port, model, jobs[:2], 2)  # warm-up
            for i in range(args.rounds):  # interleaved, so a busy spell of the machine hits every run
                add(0, *baseline(args.artifact, jobs, threads))
                for c in levels:
                    add(c, *run_level(port, model, jobs, c))
                print(f"round {i + 1} of {args.rounds} done", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            exit_code = proc.wait(120)
    results = [summarize("direct" if c == 0 else f"c{c}", max(c, 1), *runs[c]) for c in runs]
    meta = {
        "artifact": str(args.artifact.relative_to(ROOT) if args.artifact.is_relative_to(ROOT) else args.artifact),
        "target": f"{manifest.target}:{manifest.precision}",
        "engine": engine,
        "threads": args.threads or "default",
        "max_active": max(levels),
        "requests": args.requests,
        "prompt_tokens": list(args.prompt_tokens),
        "output_tokens": list(args.output_tokens),
        "seed": args.seed,
        "rounds": args.rounds,
        "server_exit_code": exit_code,
        "load_average_before": load_before,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "fingerprint": fp.model_dump(mode="json"),
    }
    out = args.results / fp.id / "serve-generation"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{manifest.model}-{args.artifact.name}-{engine}"
    write_json(out / f"{stem}.json", {**meta, "levels": [asdict(r) for r in results]})
    text = table(results, meta)
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {out / stem}.json and .md")
    if any(r.errors for r in results) or exit_code:
        sys.exit("errors under load, or a server that did not exit 0 on SIGTERM")


if __name__ == "__main__":
    main()
