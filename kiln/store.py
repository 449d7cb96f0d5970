"""The build folder: content-keyed stages, atomic writes, one lock per model.

- A stage's folder is written under a temporary name and renamed into place only after its
  ``manifest.json`` (or ``export.json``) is written, so a folder that exists under its final name
  is complete; killing a build at any moment leaves only ``.tmp-*`` debris, removed on the next run.
- A stage is up to date when its manifest's ``cache_key`` equals the key computed now from the
  content of everything it depends on.
- ``BuildLock`` holds an exclusive ``flock`` on ``<model>/.lock`` for the whole build: two builds
  into the same folder run one after the other instead of corrupting each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def cache_dir() -> Path:
    """kiln's per-user cache (``$XDG_CACHE_HOME/kiln``, default ``~/.cache/kiln``): what is
    measured once per machine and what is derived once per source file, keyed by content."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kiln"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(paths: list[Path], root: Path | None = None) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        name = str(path.relative_to(root)) if root and path.is_relative_to(root) else path.name
        h.update(name.encode() + b"\0" + sha256_file(path).encode())
    return h.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_entries(folder: Path) -> list[dict[str, Any]]:
    return [
        {"path": str(p.relative_to(folder)), "sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``final`` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_debris(folder: Path) -> None:
    """Remove what interrupted builds left (call under the lock)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


class BuildLock:
    """An exclusive lock on a model's build folder, released by the OS if the process dies."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> BuildLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another kiln build of {self.path.parent} to finish...", file=sys.stderr)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def up_to_date(folder: Path, key: str, meta_name: str = MANIFEST) -> dict[str, Any] | None:
    """The stage's manifest if the folder is complete and built from the same inputs."""
    meta = read_json(folder / meta_name)
    return meta if meta and meta.get("cache_key") == key else None
