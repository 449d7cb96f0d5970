"""llama.cpp's side of benchmarks/peers/llamacpp_smollm2.py, run in the llama.cpp peer venv
(``llamacpp.sh``: cyllama's prebuilt wheel, which bundles llama.cpp; no kiln, no pydantic here).

Two uses:

- ``llamacpp_worker.py serve --prompts FILE [--argmax]``: a benchmark worker that speaks kiln's
  worker protocol (``kiln.bench.protocol``: a ``CellSpec`` line in, ``ready``; ``round`` commands,
  each answered with the timings; ``stop``, answered ``done``), so kiln's own
  ``kiln.bench.process.WorkerProcess`` drives it and its rounds interleave with kiln's cells. Each
  run is what ``kiln.bench.worker.GenerativeCell`` times: per prompt length, one greedy generation
  of ``new_tokens`` after the prompt ids in FILE (kiln's seeded ids, the same for every engine),
  every token timed as it comes out; TTFT is the first token's time from the call (the cache
  cleared inside it, as kiln's ``generate`` resets its session), the inter-token latencies the rest.
  Greedy is llama.cpp's own greedy sampler (``llama_sampler_init_greedy``, in C), as llama.cpp's
  tools pick; ``--argmax`` instead copies each step's logits into Python and takes numpy's argmax,
  as kiln's loop does.
- ``llamacpp_worker.py extras --ids FILE --window N``: one JSON object on stdout: the perplexity
  of the ids in FILE scored the way ``kiln.decoding.perplexity`` scores them (windows of N tokens,
  each decoded from an empty cache with every position's logits), and where a decode step's time
  goes (``llama_decode`` alone, the sampler alone, the loop; llama.cpp's own perf counters).

The GGUF file is loaded as llama.cpp's users load it (mmap, default context parameters but the
context size and threads): n_ctx = the window (256, kiln's SmolLM2 context), n_threads =
n_threads_batch = the cell's threads.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import cyllama
import cyllama.llama.llama_cpp as L
import numpy as np


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def versions() -> dict[str, Any]:
    from importlib.metadata import version

    build = json.loads((Path(cyllama.__file__).parent / "build_config.json").read_text())
    return {
        "cyllama": version("cyllama"),
        "llama_cpp": build["versions"]["llama_cpp_version"],
        "ggml": L.ggml_version(),
        "ggml_commit": L.ggml_commit(),
    }


class Model(L.LlamaModel):
    """cyllama 0.2.18's ``LlamaContext.get_logits``/``get_logits_ith`` read ``model.n_vocab``,
    which its ``LlamaModel`` lacks (AttributeError); the vocabulary's size is given here."""

    @property
    def n_vocab(self) -> int:
        return self.get_vocab().n_vocab


class Engine:
    """One GGUF model and context, one sequence (seq 0), batch 1."""

    def __init__(self, gguf: str, threads: int, n_ctx: int) -> None:
        L.disable_logging()
        L.llama_backend_init()
        start = time.perf_counter()
        self.model = Model(gguf, L.LlamaModelParams())
        params = L.LlamaContextParams()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx  # a whole window in one decode call (perplexity)
        params.n_ubatch = n_ctx
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = False
        self.ctx = L.LlamaContext(self.model, params)
        self.load_s = time.perf_counter() - start
        self.n_vocab = self.model.get_vocab().n_vocab
        self.batch = L.LlamaBatch(n_tokens=n_ctx, embd=0, n_seq_max=1)
        self.sampler = L.LlamaSampler()
        self.sampler.add_greedy()
        self.n_ctx = n_ctx

    def reset(self) -> None:
        self.ctx.kv_cache_clear(False)  # the cells' metadata: the cache is empty again

    def decode(self, ids: list[int], pos: int, all_logits: bool = False) -> None:
        b = self.batch
        b.clear()
        last = len(ids) - 1
        for i, t in enumerate(ids):
            b.add(t, pos + i, [0], all_logits or i == last)
        self.ctx.decode(b)

    def greedy(self) -> int:
        return self.sampler.sample(self.ctx, -1)

    def argmax(self) -> int:
        return int(np.argmax(np.asarray(self.ctx.get_logits_ith(-1), dtype=np.float32)))

    def info(self) -> dict[str, Any]:
        p = self.ctx.params
        return {
            "execution_precision": self.model.desc,
            "threads": self.ctx.n_threads(),
            "threads_batch": self.ctx.n_threads_batch(),
            "n_ctx": self.ctx.n_ctx,
            "n_batch": self.ctx.n_batch,
            "flash_attn_type": int(p.flash_attn_type) if hasattr(p, "flash_attn_type") else None,
            "type_k": int(p.type_k) if hasattr(p, "type_k") else None,
            **versions(),
        }


class Cell:
    """A generative cell as kiln.bench.worker.GenerativeCell times one."""

    def __init__(self, spec: dict[str, Any], prompts: dict[int, list[int]], use_argmax: bool) -> None:
        gen = spec["generation"]
        self.lengths: list[int] = gen["prompt_tokens"]
        self.new_tokens: int = gen["new_tokens"]
        self.prompts = {n: prompts[n] for n in self.lengths}
        self.rss_before = rss_bytes()
        n_ctx = max(256, max(self.lengths) + self.new_tokens)
        self.engine = Engine(spec["artifact"], spec["threads"], n_ctx)
        self.pick = self.engine.argmax if use_argmax else self.engine.greedy
        self.first_ms = self._generate(self.lengths[0], 1)[0] * 1e3

    def _generate(self, length: int, new_tokens: int) -> tuple[float, list[float]]:
        e, pick, prompt = self.engine, self.pick, self.prompts[length]
        clock = time.perf_counter
        start = clock()
        e.reset()
        e.decode(prompt, 0)
        token = pick()
        marks = [clock()]
        for step in range(1, new_tokens):
            e.decode([token], length + step - 1)
            token = pick()
            marks.append(clock())
        return marks[0] - start, [b - a for a, b in itertools.pairwise(marks)]

    def _runs(self, seconds: float, iters: int) -> tuple[int, dict[int, list[float]], dict[int, list[float]]]:
        ttft: dict[int, list[float]] = {n: [] for n in self.lengths}
        itl: dict[int, list[float]] = {n: [] for n in self.lengths}
        total, runs = 0.0, 0
        while total < seconds or runs < iters:
            for length in self.lengths:
                first, steps = self._generate(length, self.new_tokens)
                ttft[length].append(first)
                itl[length] += steps
                total += first + sum(steps)
            runs += 1
        return runs, ttft, itl

    def round(self, cmd: dict[str, Any]) -> dict[str, Any]:
        warm = self._runs(cmd["warmup_seconds"], cmd["warmup_iters"])[0]
        gc.collect()
        gc.disable()
        try:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            _, ttft, itl = self._runs(cmd["min_seconds"], cmd["min_iters"])
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        finally:
            gc.enable()
        steps = [s for n in itl for s in itl[n]]
        return {
            "event": "round",
            "seconds": steps,
            "warmup_iters": warm,
            "page_faults": faults,
            "ttft": ttft,
            "itl": itl,
        }

    def ready(self) -> dict[str, Any]:
        return {
            "event": "ready",
            "load_s": self.engine.load_s,
            "import_s": 0.0,
            "first_ms": self.first_ms,
            "rss_before_load_bytes": self.rss_before,
            "info": self.engine.info(),
        }


def _answer(out: TextIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def serve(inp: TextIO, out: TextIO, prompts: dict[int, list[int]], use_argmax: bool) -> int:
    try:
        cell = Cell(json.loads(inp.readline()), prompts, use_argmax)
        _answer(out, cell.ready())
        for line in inp:
            cmd = json.loads(line)
            if cmd["cmd"] == "round":
                _answer(out, cell.round(cmd))
            else:
                _answer(out, {"event": "done", "peak_rss_bytes": peak_rss_bytes()})
                return 0
        return 0
    except Exception as err:
        import traceback

        traceback.print_exc(file=sys.stderr)
        _answer(
            out, {"event": "error", "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        )
        return 1


def perplexity(e: Engine, ids: list[int], window: int) -> float:
    """kiln.decoding.perplexity's windows and sums, on llama.cpp's logits of every position."""
    nll, count = 0.0, 0
    for start in range(0, max(len(ids) - 1, 1), window):
        chunk = list(ids[start : start + window])
        if len(chunk) < 2:
            break
        e.reset()
        e.decode(chunk, 0, all_logits=True)
        shifted = np.asarray([e.ctx.get_logits_ith(i) for i in range(len(chunk) - 1)], dtype=np.float64)
        top = shifted.max(axis=1, keepdims=True)
        logz = (top + np.log(np.exp(shifted - top).sum(axis=1, keepdims=True)))[:, 0]
        targets = np.asarray(chunk[1:])
        nll += float((logz - shifted[np.arange(len(targets)), targets]).sum())
        count += len(targets)
    return float(np.exp(nll / count)) if count else float("nan")


def breakdown(e: Engine, prompt: list[int], new_tokens: int, generations: int) -> dict[str, Any]:
    """Per decode step: llama_decode alone, the greedy sampler alone, the argmax path's logits
    copy to Python + numpy argmax alone, and the whole step; llama.cpp's own eval time per token."""
    clock = time.perf_counter
    decode_s, sample_s, copy_s, step_s = [], [], [], []
    for g in range(generations + 1):  # the first is a warm-up
        e.reset()
        e.decode(prompt, 0)
        token = e.greedy()
        if g == 0:
            e.ctx.reset_perf_data()
        for step in range(1, new_tokens):
            t0 = clock()
            e.decode([token], len(prompt) + step - 1)
            t1 = clock()
            token = e.greedy()
            t2 = clock()
            if g:
                decode_s.append(t1 - t0)
                sample_s.append(t2 - t1)
                step_s.append(t2 - t0)
                t3 = clock()
                e.argmax()
                copy_s.append(clock() - t3)
    perf = e.ctx.get_perf_data()
    med = lambda xs: float(np.median(xs)) * 1e3  # noqa: E731
    return {
        "steps": len(step_s),
        "decode_ms_p50": med(decode_s),
        "greedy_sampler_ms_p50": med(sample_s),
        "step_ms_p50": med(step_s),
        "logits_to_python_argmax_ms_p50": med(copy_s),
        "llama_perf": perf,
        "llama_eval_ms_per_token": perf["t_eval_ms"] / perf["n_eval"] if perf.get("n_eval") else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--prompts", type=Path, required=True, help='JSON {"32": [ids...]}')
    s.add_argument("--argmax", action="store_true", help="logits into Python and numpy's argmax, as kiln")
    x = sub.add_parser("extras")
    x.add_argument("gguf")
    x.add_argument("--ids", type=Path, required=True, help="JSON list: the held-out ids")
    x.add_argument("--window", type=int, required=True)
    x.add_argument("--prompts", type=Path, required=True)
    x.add_argument("--new-tokens", type=int, default=64)
    x.add_argument("--threads", type=int, default=2)
    x.add_argument("--generations", type=int, default=5)
    a = p.parse_args()
    protocol = os.fdopen(os.dup(1), "w")  # answers only: whatever llama.cpp prints goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if a.mode == "serve":
        prompts = {int(k): v for k, v in json.loads(a.prompts.read_text()).items()}
        return serve(sys.stdin, protocol, prompts, a.argmax)
    ids = json.loads(a.ids.read_text())
    prompt = next(iter(json.loads(a.prompts.read_text()).values()))
    e = Engine(a.gguf, a.threads, max(a.window, len(prompt) + a.new_tokens))
    t0 = time.perf_counter()
    ppl = perplexity(e, ids, a.window)
    one = Engine(a.gguf, 1, max(a.window, len(prompt) + a.new_tokens))  # threading: the same step on 1 thread
    single = breakdown(one, prompt, a.new_tokens, max(1, a.generations // 2))
    result = {
        "perplexity": ppl,
        "heldout_tokens": len(ids),
        "window": a.window,
        "perplexity_s": time.perf_counter() - t0,
        "breakdown": {
            **breakdown(e, prompt, a.new_tokens, a.generations),
            "step_ms_p50_1_thread": single["step_ms_p50"],
        },
        "info": e.info(),
    }
    protocol.write(json.dumps(result) + "\n")
    protocol.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
