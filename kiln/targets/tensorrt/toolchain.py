"""TensorRT itself: the supported versions, the process's one logger, the CUDA device.

kiln is written against TensorRT 10's Python API: 11 removed the weak-typing builder flags
(``BuilderFlag.FP16/INT8/FP8/BF16``, deprecated since 10.12) that kiln's fp16, bf16 and
int8-with-fp16-fallback builds set, so 11 is refused (exit 5) until kiln supports it.
``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` first shipped in TensorRT 9.0 (8.6 lacks it), so
every supported version has it.

TensorRT keeps the first ``ILogger`` it is given while any builder or runtime lives and sends
every later builder's messages there; a logger made per build would hear nothing from the second
build on. So there is one logger per process (as Polygraphy's ``get_trt_logger``), and each build
reads its own messages through :meth:`capture`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kiln.errors import UnavailableError

INSTALL = (
    "pip install 'kiln[tensorrt]' -c constraints.txt (TensorRT >=10,<11; its libraries come from NVIDIA's index) "
    "and a CUDA build of PyTorch"
)
SUPPORTED = (10, 11)  # majors [10, 11)

_LOGGER: Any = None


def check_version(version: str) -> None:
    """Refuse (exit 5) a TensorRT whose API kiln is not written against, naming both versions."""
    match = re.match(r"(\d+)\.", version)
    if match is None or not SUPPORTED[0] <= int(match.group(1)) < SUPPORTED[1]:
        raise UnavailableError(
            f"TensorRT {version} is installed but kiln supports TensorRT {SUPPORTED[0]}.x only; "
            f"uninstall it, then {INSTALL}"
        )


def import_tensorrt() -> Any:
    """``tensorrt`` 10.x, or the exit-5 error that says what to install."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as err:  # the bindings import, but libnvinfer may be missing
        raise UnavailableError(f"TensorRT does not load here ({err}); {INSTALL}") from err
    check_version(str(getattr(trt, "__version__", "unknown")))
    return trt


def cuda_device() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise UnavailableError(f"PyTorch sees no CUDA GPU (torch {torch.__version__}); {INSTALL}")
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}", "sm": (major, minor)}


def trt_logger(trt: Any) -> Any:
    """The process's one TensorRT logger; messages are kept only inside :meth:`capture`."""
    global _LOGGER
    if _LOGGER is None:

        class Logger(trt.ILogger):  # the sparsity report and build errors live in the builder's log
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[tuple[Any, str]] | None = None  # the open capture

            def log(self, severity: Any, msg: str) -> None:
                if self.messages is not None and severity != trt.ILogger.Severity.VERBOSE:
                    self.messages.append((severity, msg))

            @contextmanager
            def capture(self) -> Iterator[list[tuple[Any, str]]]:
                outer, self.messages = self.messages, []
                try:
                    yield self.messages
                finally:
                    self.messages = outer

        _LOGGER = Logger()
    return _LOGGER


def errors(trt: Any, messages: list[tuple[Any, str]]) -> str:
    """The error lines of a captured log (its tail), for a one-line message."""
    bad = (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR)
    return "; ".join(msg for severity, msg in messages if severity in bad)[-800:] or "no error logged"
