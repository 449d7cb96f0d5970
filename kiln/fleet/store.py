"""One content-addressed store shared by every node: a folder, a shared filesystem, or object
storage through fsspec (``s3://bucket/prefix``, ``gs://``, ``memory://``...).

Keys are the build's stage cache keys (a hash of everything a stage is made from), and a key is
published write-then-commit, the promises of the local build folder carried over to storage
that has no atomic folder rename:

- ``objects/<key>/<upload>/...``: the files, uploaded under a fresh upload id, never read before
  their commit;
- ``refs/<key>.json``: the commit, written last and whole (a temporary name moved into place:
  one rename on a filesystem, one copy of a single object on S3). It lists every file with its
  sha256 and bytes. A key exists when its ref exists; a writer killed before it leaves only an
  unreferenced upload.
- Two nodes publishing one key upload to two upload ids; the first ref seen wins, a later one
  finds it and drops its own upload. Were both refs written at once, each is complete and names
  its own complete upload, so a reader gets one whole artifact or the other.
- ``leases/<key>/<host>-<pid>.json``: who is working on a key now (the driver's progress and the
  fault tests read it); removed when the task ends, left by a killed one.

Fetches check every file's sha256 against its ref and land in a local folder through
:func:`kiln.store.atomic_dir`. A store on a local path hardlinks instead of copying where it can.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kiln.fleet.errors import StoreError, StoreIntegrityError
from kiln.store import atomic_dir, sha256_file


class StoredFile(BaseModel):
    path: str
    sha256: str
    bytes: int


class Ref(BaseModel):
    """A key's commit: which upload holds it and every file in it."""

    key: str
    upload: str
    files: list[StoredFile]
    created: str
    writer: str  # host:pid
    meta: dict[str, Any] = {}


class Store:
    """The store at ``url``: a local path or an fsspec URL; picklable (tasks get it as is)."""

    def __init__(self, url: str | Path, **options: Any) -> None:
        self.url = str(url)
        self.options = options
        self._fs: Any = None
        self._root = ""

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], **state["options"])  # type: ignore[misc]

    @property
    def local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    def _connect(self) -> tuple[Any, str]:
        if self._fs is None:
            try:
                import fsspec.core
            except ImportError as err:
                raise StoreError(
                    "the fleet's store needs fsspec (pip install 'kiln[fleet]' -c constraints.txt)"
                ) from err
            url = str(Path(self.url).resolve()) if self.local and "://" not in self.url else self.url
            try:
                fs, root = fsspec.core.url_to_fs(url, **({"auto_mkdir": True} if self.local else {}), **self.options)
            except (ImportError, ValueError) as err:
                raise StoreError(f"cannot open the store {self.url}: {err}; check --store") from err
            self._fs, self._root = fs, root.rstrip("/")
        return self._fs, self._root

    def _path(self, *parts: str) -> str:
        return "/".join((self._connect()[1], *parts))

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one storage call; what the storage refuses (credentials, a missing bucket) is one line."""
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except (OSError, PermissionError) as err:
            raise StoreError(
                f"the store {self.url} refused to {what}: {err}; check --store and its credentials"
            ) from err

    def check(self) -> None:
        """Fail now, with one line, if the store cannot be listed or written."""
        fs, _ = self._connect()
        probe = self._path("leases", f".probe-{uuid.uuid4().hex}")
        self._call("write", fs.pipe_file, probe, b"ok")
        self._call("delete", fs.rm_file, probe)

    def ref(self, key: str) -> Ref | None:
        """The key's commit, or ``None`` when it is not published (or its ref is unreadable)."""
        fs, _ = self._connect()
        try:
            data = self._call("read", fs.cat_file, self._path("refs", f"{key}.json"))
        except FileNotFoundError:
            return None
        try:
            return Ref.model_validate_json(data)
        except ValueError:
            return None

    def publish(self, key: str, folder: Path, meta: dict[str, Any] | None = None) -> Ref:
        """Upload ``folder``'s files under a fresh upload id, then commit the key; if the key is
        (or becomes) published by another writer, keep theirs and drop this upload."""
        existing = self.ref(key)
        if existing is not None:
            return existing
        fs, _ = self._connect()
        upload = uuid.uuid4().hex
        files = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            self._call("write", fs.put_file, str(path), self._path("objects", key, upload, rel))
            files.append(StoredFile(path=rel, sha256=sha256_file(path), bytes=path.stat().st_size))
        ref = Ref(
            key=key,
            upload=upload,
            files=files,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            writer=f"{socket.gethostname()}:{os.getpid()}",
            meta=meta or {},
        )
        won = self.ref(key)
        if won is not None:  # another node committed while this one uploaded
            self._call("delete", fs.rm, self._path("objects", key, upload), recursive=True)
            return won
        tmp = self._path("refs", f".{key}.{upload}.tmp")
        self._call("write", fs.pipe_file, tmp, ref.model_dump_json().encode())
        self._call("commit", fs.mv, tmp, self._path("refs", f"{key}.json"))
        return ref

    def fetch(self, key: str, dest: Path) -> Ref:
        """The key's files into ``dest`` (replaced whole, only once every file checks out)."""
        ref = self.ref(key)
        if ref is None:
            raise StoreError(f"{key[:12]} is not in the store {self.url}; run kiln fleet again to rebuild it")
        fs, _ = self._connect()
        with atomic_dir(dest) as tmp:
            for entry in ref.files:
                remote = self._path("objects", key, ref.upload, entry.path)
                target = tmp / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                if not (self.local and _link(remote, target)):
                    self._call("read", fs.get_file, remote, str(target))
                if sha256_file(target) != entry.sha256:
                    raise StoreIntegrityError(
                        f"{entry.path} of {key[:12]} in the store {self.url} is not what was committed "
                        f"(its sha256 differs); delete refs/{key}.json there and run kiln fleet again"
                    )
        return ref

    def lease(self, key: str, about: dict[str, Any]) -> str:
        """Say who works on ``key`` now; returns the lease's path, for :meth:`release`."""
        fs, _ = self._connect()
        path = self._path("leases", key, f"{socket.gethostname()}-{os.getpid()}.json")
        body = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), **about}
        self._call("write", fs.pipe_file, path, json.dumps(body).encode())
        return path

    def release(self, path: str) -> None:
        fs, _ = self._connect()
        with contextlib.suppress(OSError):  # a lease is information only
            fs.rm_file(path)

    def leases(self) -> dict[str, list[dict[str, Any]]]:
        """Every lease in the store, by key."""
        fs, _ = self._connect()
        found: dict[str, list[dict[str, Any]]] = {}
        try:
            paths = self._call("list", fs.glob, self._path("leases", "*", "*.json"))
        except FileNotFoundError:
            return found
        for path in paths:
            try:
                found.setdefault(path.rstrip("/").split("/")[-2], []).append(json.loads(fs.cat_file(path)))
            except (OSError, ValueError):
                continue  # released meanwhile
        return found


def _link(remote: str, target: Path) -> bool:
    """Hardlink a file of a local store (never modified in place: uploads are write-once)."""
    try:
        os.link(remote, target)
    except OSError:
        return False
    return True


def copy_tree(src: Path, dest: Path) -> None:
    """Hardlink (else copy) a local folder's files: a task's private view of a shared stage."""
    for path in src.rglob("*"):
        if path.is_file():
            out = dest / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            if not _link(str(path), out):
                shutil.copy2(path, out)
