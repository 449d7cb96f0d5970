"""Writes that never lose data, for ``kiln package``, ``keygen`` and ``verify --extract``: every
file is written under a temporary name beside its destination and renamed into place only at the
end; folders made on the way are removed again when the command fails, so a failure leaves the
destination exactly as it was."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def make_dirs(folder: Path) -> list[Path]:
    """``mkdir -p folder``; the folders it created, deepest first (for :func:`remove_made`)."""
    made = []
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        made.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    return made


def remove_made(made: list[Path]) -> None:
    """Remove the folders :func:`make_dirs` created, each only while still empty."""
    for folder in made:
        with contextlib.suppress(OSError):
            folder.rmdir()


def temp_beside(path: Path) -> Path:
    """A fresh hidden name in ``path``'s folder (a rename from it to ``path`` is atomic)."""
    return path.with_name(f".tmp-{uuid.uuid4().hex[:12]}")


def write_temp(path: Path, data: bytes, mode: int) -> Path:
    """``data`` in a new temporary file beside ``path``, with ``mode`` whatever the umask; the
    caller renames it to ``path`` (or removes it)."""
    tmp = temp_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
