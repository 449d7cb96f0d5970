"""Run one call in a fresh child process: what it allocates goes back to the system when it
ends, and a toolchain that crashes or is killed for memory inside it fails that call, not the
caller.

``kiln tune`` builds dozens of variants in one search. Toolchains keep what they load (graphs,
calibration statistics, compiled kernels) for the life of the process, so in-process builds of
ResNet-50 grew one ``kiln tune`` to 24 GB and the kernel killed it, search and all. In a child per
call, each build starts from nothing.

The child is *spawned* (a fresh interpreter, never a fork of a process holding torch's or a
runtime's threads). ``fn`` must be importable (a module-level function) and its arguments and
result picklable. The call gets a ``progress`` callable whose lines reach the caller's, in order;
warnings it raises are re-raised in the caller; the caller's quiet-toolchains state is applied in
the child first.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Progress = Callable[[str], None]


class IsolatedFailure(Exception):
    """The call raised in the child, or the child died before it answered."""


def run_isolated(fn: Callable[..., T], *args: Any, progress: Progress = lambda _: None) -> T:
    """``fn(*args, progress=...)`` in a spawned child; its result, or :class:`IsolatedFailure`."""
    from kiln.targets import base

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, fn, args, base.QUIET), daemon=True)
    child.start()
    send.close()
    answer: tuple[str, Any] | None = None
    try:
        while answer is None:
            try:
                kind, payload = receive.recv()
            except EOFError:
                break
            if kind == "progress":
                progress(payload)
            elif kind == "warning":
                category, message = payload
                warnings.warn(message, category, stacklevel=2)
            else:
                answer = (kind, payload)
        child.join()
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()
    if answer is None:
        raise IsolatedFailure(_death(child.exitcode))
    kind, payload = answer
    if kind == "error":
        raise IsolatedFailure(payload)
    return payload  # type: ignore[no-any-return]


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (the system may have run out of memory)" if name == "SIGKILL" else ""
        return f"its process was killed by {name}{hint}"
    return f"its process exited with status {code} before answering"


def _child(send: Any, fn: Callable[..., Any], args: tuple[Any, ...], quiet: bool) -> None:
    if quiet:
        from kiln.targets import quiet_toolchains

        quiet_toolchains()

    def showwarning(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
        send.send(("warning", (category, str(message))))

    warnings.showwarning = showwarning
    try:
        result = fn(*args, progress=lambda line: send.send(("progress", line)))
    except BaseException as err:
        text = f"{type(err).__name__}: {err}".strip()
        if not str(err):
            text += " (" + traceback.format_exc(limit=-1).strip().splitlines()[-1] + ")"
        send.send(("error", text))
    else:
        send.send(("result", result))
    finally:
        send.close()
