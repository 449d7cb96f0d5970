"""One benchmark cell in its own process: ``python -m kiln.bench.worker``.

The parent writes one JSON line (the cell, :class:`kiln.bench.protocol.CellSpec`) on stdin; the
worker loads the artifact, runs the first inference and answers ``ready``; then each ``round``
command runs a warm-up (by time and count) and a timed loop (until both the minimum time and
count are met) and answers the raw timings; ``stop`` answers the worker's peak RSS and exits. Any failure answers ``error`` and
exits non-zero; a worker that dies without answering becomes an error cell in the parent. A causal
LM's cell (:class:`GenerativeCell`) runs greedy generations instead and answers each token's time.

Toolchains print to stdout; the protocol uses a private copy of the original stdout and fd 1 is
pointed at stderr, so nothing a runtime prints can corrupt an answer.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from kiln.bench.protocol import COMMAND, CellSpec, Done, ErrorAnswer, Ready, RoundAnswer, RoundCommand
from kiln.errors import error_line
from kiln.hardware import peak_rss_bytes
from kiln.results import RuntimeInfo, Threading
from kiln.spec import Arrays
from kiln.targets.base import Runner


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


# Environment variables that steer the threads of OpenMP (libgomp, Intel's libiomp, LLVM's
# libomp), the math libraries and the runtimes' own pools; recorded per cell as they were set.
THREADING_ENV = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "DNNL_", "ONEDNN_", "TBB_", "ORT_", "OV_")
# ... and those that steer the process's memory allocator (glibc's tunables, a preloaded one).
MEMORY_ENV = ("GLIBC_TUNABLES", "MALLOC_", "LD_PRELOAD", "THP_MEM_ALLOC_ENABLE")


def threading_facts() -> Threading:
    """The threading this worker runs with: the steering variables set in its environment, the
    OpenMP runtimes mapped into it (read from ``/proc/self/maps``: a runtime may bundle its own
    copy, and two copies spin independently), and torch's intra-op threads if torch is loaded."""
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(THREADING_ENV + MEMORY_ENV)}
    libraries: set[str] = set()
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            name = line.rsplit("/", 1)[-1] if "/" in line else ""
            if ".so" in name and any(tag in name for tag in ("gomp", "iomp", "libomp")):
                libraries.add(name)
    except OSError:
        pass
    torch_threads = backend = None
    torch = sys.modules.get("torch")
    if torch is not None:
        torch_threads = torch.get_num_threads()
        for line in torch.__config__.parallel_info().splitlines():
            if line.startswith("ATen parallel backend:"):
                backend = line.partition(":")[2].strip()
    return Threading(env=env, openmp_libraries=sorted(libraries), torch_threads=torch_threads, torch_backend=backend)


def minor_faults() -> int:
    """This process's minor page faults so far, all its threads."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def prepare_inputs(signature: Any, batch: int, count: int, seed: int) -> list[Arrays]:
    """Seeded inputs for ``count`` requests at ``batch``, made before any timing starts."""
    from kiln.spec import batch_dim, random_inputs

    dim = batch_dim(signature)
    sizes = {dim: batch} if dim else {}
    return [random_inputs(signature, "opt", seed + i, sizes) for i in range(count)]


def timed_loop(step: Any, sync: Any, min_seconds: float, min_iters: int) -> list[float]:
    """Run ``step`` until both ``min_seconds`` of timed work and ``min_iters`` samples are done."""
    samples: list[float] = []
    total = 0.0
    clock = time.perf_counter
    while total < min_seconds or len(samples) < min_iters:
        start = clock()
        step()
        sync()
        elapsed = clock() - start
        samples.append(elapsed)
        total += elapsed
    return samples


class LoadedCell:
    """A loaded runner and its prepared inputs."""

    def __init__(self, spec: CellSpec) -> None:
        from kiln.targets import REGISTRY
        from kiln.targets.base import RunOptions
        from kiln.targets.opening import artifact_manifest, open_runner

        self.spec = spec
        self.rss_before = _rss_bytes()
        manifest = artifact_manifest(Path(spec.artifact))
        self.signature = manifest.signature
        start = time.perf_counter()
        for package in REGISTRY[manifest.target].packages_for(manifest.precision):
            importlib.import_module(package.module)
        self.import_s = time.perf_counter() - start
        options = RunOptions(threads=spec.threads, mode=spec.mode, requests=spec.requests)
        start = time.perf_counter()
        self.runner: Runner = open_runner(Path(spec.artifact), options, manifest)
        self.load_s = time.perf_counter() - start
        self.first_ms = self.first()

    def first(self) -> float:
        """Prepare the inputs and time the first inference (ms)."""
        count = self.spec.requests if self.spec.mode == "throughput" else 1
        self.inputs = prepare_inputs(self.signature, self.spec.batch, count, self.spec.seed)
        start = time.perf_counter()
        self.step()
        self.runner.synchronize()
        return (time.perf_counter() - start) * 1e3

    def step(self) -> None:
        if self.spec.mode == "throughput":
            self.runner.infer_many(self.inputs)
        else:
            self.runner.infer(self.inputs[0])

    def close(self) -> None:
        self.runner.close()

    def ready(self) -> Ready:
        return Ready(
            load_s=self.load_s,
            import_s=self.import_s,
            first_ms=self.first_ms,
            rss_before_load_bytes=self.rss_before,
            info=RuntimeInfo.model_validate(self.runner.info()),
            threading=threading_facts(),
        )

    def round(self, cmd: RoundCommand) -> RoundAnswer:
        warm = timed_loop(self.step, self.runner.synchronize, cmd.warmup_seconds, cmd.warmup_iters)
        gc.collect()
        gc.disable()  # a collection inside the timed region would land on one unlucky sample
        try:
            faults = minor_faults()
            samples = timed_loop(self.step, self.runner.synchronize, cmd.min_seconds, cmd.min_iters)
            faults = minor_faults() - faults
        finally:
            gc.enable()
        return RoundAnswer(seconds=samples, warmup_iters=len(warm), page_faults=faults)


def prompt_ids(vocab: int, length: int, seed: int) -> list[int]:
    """A seeded prompt of ``length`` token ids: the same for every target of a run."""
    import numpy as np

    return np.random.default_rng([seed, length]).integers(0, vocab, length).tolist()


class GenerativeCell(LoadedCell):
    """A causal LM's cell: greedy generations through the one decode loop every target shares
    (``kiln.decoding.session_for`` + ``generate``), each token timed as it comes out. A run is
    one generation from each prompt length in turn; end of sequence is ignored, so each
    generation decodes ``new_tokens``."""

    def first(self) -> float:
        """Make the prompts and the session; time the first generation's TTFT (ms), cold."""
        from kiln.decoding import session_for

        gen = self.spec.generation
        assert gen is not None
        if self.signature.cache is None:
            raise ValueError(f"{self.spec.artifact} is not a causal LM's step graph; it has no generation to time")
        if not gen.prompt_tokens:
            raise ValueError("a generative cell needs at least one prompt length")
        vocab = self.signature.cache.vocab_size
        self.prompts = {n: prompt_ids(vocab, n, self.spec.seed) for n in gen.prompt_tokens}
        self.session = session_for(self.runner, self.signature)
        return self._generate(gen.prompt_tokens[0], 1)[0] * 1e3

    def _generate(self, length: int, new_tokens: int) -> tuple[float, list[float]]:
        """(TTFT, inter-token latencies) in seconds of one generation."""
        from kiln.decoding import generate

        clock = time.perf_counter
        start = clock()
        marks = [clock() for _ in generate(self.session, self.prompts[length], new_tokens)]
        return marks[0] - start, [b - a for a, b in itertools.pairwise(marks)]

    def _runs(self, seconds: float, iters: int) -> tuple[int, dict[int, list[float]], dict[int, list[float]]]:
        """Runs (one generation per prompt length) until ``seconds`` and ``iters`` are met:
        their count, and TTFT and inter-token latencies per prompt length."""
        gen = self.spec.generation
        assert gen is not None
        ttft: dict[int, list[float]] = {n: [] for n in gen.prompt_tokens}
        itl: dict[int, list[float]] = {n: [] for n in gen.prompt_tokens}
        total, runs = 0.0, 0
        while total < seconds or runs < iters:
            for length in gen.prompt_tokens:
                first, steps = self._generate(length, gen.new_tokens)
                ttft[length].append(first)
                itl[length] += steps
                total += first + sum(steps)
            runs += 1
        return runs, ttft, itl

    def round(self, cmd: RoundCommand) -> RoundAnswer:
        warm = self._runs(cmd.warmup_seconds, cmd.warmup_iters)[0]
        gc.collect()
        gc.disable()
        try:
            faults = minor_faults()
            _, ttft, itl = self._runs(cmd.min_seconds, cmd.min_iters)
            faults = minor_faults() - faults
        finally:
            gc.enable()
        steps = [s for length in itl for s in itl[length]]
        return RoundAnswer(seconds=steps, warmup_iters=warm, page_faults=faults, ttft=ttft, itl=itl)

    def close(self) -> None:
        self.session.close()
        super().close()


def _answer(out: TextIO, message: BaseModel) -> None:
    out.write(message.model_dump_json() + "\n")
    out.flush()


def serve(inp: TextIO, out: TextIO) -> int:
    """The protocol loop; returns the exit status."""
    try:
        spec = CellSpec.model_validate_json(inp.readline())
        cell = GenerativeCell(spec) if spec.generation else LoadedCell(spec)
        _answer(out, cell.ready())
        for line in inp:
            cmd = COMMAND.validate_json(line)
            if isinstance(cmd, RoundCommand):
                _answer(out, cell.round(cmd))
            else:
                cell.close()
                _answer(out, Done(peak_rss_bytes=peak_rss_bytes()))
                return 0
        return 0
    except Exception as err:
        traceback.print_exc(file=sys.stderr)
        _answer(out, ErrorAnswer(error=error_line(err, 400)))
        return 1


def main(inp: TextIO | None = None) -> int:
    """Serve the protocol on ``inp`` (stdin by default) with stdout kept for the answers."""
    from kiln.targets import block_imports

    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    block_imports()
    return serve(inp or sys.stdin, protocol)


if __name__ == "__main__":
    sys.exit(main())
