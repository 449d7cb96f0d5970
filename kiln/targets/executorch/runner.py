"""A ``.pte`` on ExecuTorch's Python runtime (``executorch.runtime``), threads set explicitly."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError
from kiln.spec import Arrays, Signature
from kiln.targets.base import Runner, RunOptions
from kiln.tensors import named_outputs, set_threads, to_tensors


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """The runtime's C++ logs cpuinfo probes and thread-pool resets straight to file descriptor
    2 on import and load; none of it is actionable, so it is dropped there (Python's own
    ``sys.stderr`` is untouched)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def runtime() -> tuple[Any, Any]:
    """ExecuTorch's runtime singleton and its pybindings module (imported quietly)."""
    with native_stderr_silenced():
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        return Runtime.get(), portable_lib


def set_runtime_threads(threads: int | None) -> int:
    """The thread count for XNNPACK's pool (process-wide): the one PyTorch uses, set when given."""
    count = set_threads(threads)
    _, lib = runtime()
    with native_stderr_silenced():  # the pool's first use probes the CPU, loudly
        if lib._threadpool_get_thread_count() != count:
            lib._unsafe_reset_threadpool(count)
        return int(lib._threadpool_get_thread_count())


def check_inputs(sig: Signature, inputs: Arrays) -> None:
    """Every input's shape fits the spec (rank, fixed axes, each dim within min..max, one size
    per dim): a size above a dim's max would otherwise fail deep in ``set_inputs`` (0x10)."""
    seen: dict[str, int] = {}
    for spec in sig.inputs:
        if spec.name not in inputs:
            raise ConfigError(f"executorch: input {spec.name!r} is missing; the program takes {sig.input_names}")
        shape = tuple(inputs[spec.name].shape)
        if len(shape) != len(spec.shape):
            raise ConfigError(f"executorch: input {spec.name!r} has shape {shape}; expected rank {len(spec.shape)}")
        for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
            if isinstance(want, int):
                if got != want:
                    raise ConfigError(f"executorch: input {spec.name!r} axis {axis} is {got}; the program fixes {want}")
                continue
            dim = sig.dims[want]
            if not dim.min <= got <= dim.max:
                raise ConfigError(
                    f"executorch: input {spec.name!r} dim {want!r} is {got}, outside {dim.min}..{dim.max} that the "
                    f".pte's memory was planned for; send a size within it, or rebuild with a wider [model].dims.{want}"
                )
            if seen.setdefault(want, got) != got:
                raise ConfigError(f"executorch: dim {want!r} is {seen[want]} in one input and {got} in {spec.name!r}")


class PteRunner(Runner):
    """One loaded ``forward`` method, reused across calls; outputs keyed by the signature."""

    def __init__(self, path: Path, sig: Signature, options: RunOptions) -> None:
        """Whether its delegate runs here was asked before (:func:`kiln.targets.available_here`)."""
        rt, _ = runtime()
        self.sig = sig
        self.threads = set_runtime_threads(options.threads)
        with native_stderr_silenced():
            self.program = rt.load_program(str(path))
            self.method = self.program.load_method("forward")

    def infer(self, inputs: Arrays) -> Arrays:
        check_inputs(self.sig, inputs)
        outputs = self.method.execute(to_tensors(self.sig, inputs))  # cloned out of the planned arena
        return named_outputs(self.sig.outputs, [out.numpy() for out in outputs])

    def info(self) -> dict[str, Any]:
        return {"threads": self.threads}

    def close(self) -> None:
        self.method = self.program = None
