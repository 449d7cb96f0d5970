"""The parent's side of a worker: start it, send commands, turn any death into an error."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

WORKER_COMMAND = (sys.executable, "-m", "kiln.bench.worker")


class WorkerFailed(Exception):
    """The worker answered an error, died, or went silent past its deadline."""


class WorkerProcess:
    """One cell's process. Its stderr goes to a temporary file (a pipe could fill and block it)."""

    def __init__(self, spec: dict[str, Any], command: tuple[str, ...] = WORKER_COMMAND, timeout: float = 600) -> None:
        self.timeout = timeout
        self.stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 (closed in close())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        try:
            self.ready = self.send(spec)
        except WorkerFailed:
            self.close()
            raise

    def send(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one JSON line and wait for the answer line."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
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
        answer = json.loads(line)
        if answer.get("event") == "error":
            self.proc.wait(timeout=30)
            raise WorkerFailed(answer["error"])
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

    def stop(self) -> dict[str, Any]:
        answer = self.send({"cmd": "stop"})
        deadline = time.monotonic() + 30
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return answer
