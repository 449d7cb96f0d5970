"""The parent's side of a worker: start it, send commands, turn any death into an error."""

from __future__ import annotations

import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from kiln.bench.protocol import ANSWER, CellSpec, Done, ErrorAnswer, Ready, RoundAnswer, RoundCommand, StopCommand

WORKER_COMMAND = (sys.executable, "-m", "kiln.bench.worker")
Expected = TypeVar("Expected", Ready, RoundAnswer, Done)


@dataclass(frozen=True)
class Launch:
    """How workers are started: the command (tests put a misbehaving one here) and how long a
    worker may stay silent before it is stopped."""

    command: tuple[str, ...] = WORKER_COMMAND
    timeout: float = 600.0
    env: Mapping[str, str] = field(default_factory=dict)  # over the parent's environment


DEFAULT_LAUNCH = Launch()

# glibc's largest dynamic mmap threshold on 64-bit (a larger value is ignored), and a trim
# threshold no model's activations reach: with both set, glibc stops moving them.
STEADY_TUNABLES = ("glibc.malloc.mmap_threshold=33554432", "glibc.malloc.trim_threshold=1073741824")


def malloc_environment(malloc: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a worker needs for ``BenchSettings.malloc``: nothing for "system" or off
    glibc; for "steady", ``GLIBC_TUNABLES`` with the pinned thresholds ahead of any the user set
    (a tunable the user names keeps the user's value: glibc takes the last one)."""
    if malloc == "system" or platform.libc_ver()[0] != "glibc":
        return {}
    environ = os.environ if environ is None else environ
    ours = ":".join(STEADY_TUNABLES)
    theirs = environ.get("GLIBC_TUNABLES", "")
    return {"GLIBC_TUNABLES": f"{ours}:{theirs}" if theirs else ours}


class WorkerFailed(Exception):
    """The worker answered an error, died, or went silent past its deadline."""


class WorkerProcess:
    """One cell's process. Its stderr goes to a temporary file (a pipe could fill and block it)."""

    def __init__(self, spec: CellSpec, launch: Launch = DEFAULT_LAUNCH) -> None:
        self.timeout = launch.timeout
        self.stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 (closed in close())
        env = {**os.environ, **launch.env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            list(launch.command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        try:
            self.ready = self._send(spec, Ready)
        except WorkerFailed:
            self.close()
            raise

    def round(self, command: RoundCommand) -> RoundAnswer:
        return self._send(command, RoundAnswer)

    def _send(self, message: BaseModel, expected: type[Expected]) -> Expected:
        """Send one JSON line and wait for the answer line."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(message.model_dump_json() + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerFailed(self._death()) from None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            self.kill()
            raise WorkerFailed(f"worker gave no answer within {self.timeout:.0f} s and was stopped")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerFailed(self._death())
        try:
            answer = ANSWER.validate_json(line)
        except ValidationError:
            self.kill()
            raise WorkerFailed(f"worker answered outside the protocol: {line.strip()[:200]}") from None
        if isinstance(answer, ErrorAnswer):
            self.proc.wait(timeout=30)
            raise WorkerFailed(answer.error)
        if not isinstance(answer, expected):
            self.kill()
            raise WorkerFailed(f"worker answered {answer.event!r} where {expected.__name__} was due")
        return answer

    def _death(self) -> str:
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        tail = self.stderr_tail()
        return f"worker {how} without answering" + (f" (last stderr line: {tail})" if tail else "")

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = [ln.strip() for ln in self.stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.stderr.close()

    def stop(self) -> Done:
        answer = self._send(StopCommand(), Done)
        deadline = time.monotonic() + 30
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return answer
