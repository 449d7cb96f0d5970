"""The one reader of bundle archives: ``kiln verify``, ``kiln serve`` (through
:func:`kiln.ship.verify.extract_verified`) and anything else that unpacks a bundle call
:func:`extract`, which never writes outside the new folder it creates.

A bundle is untrusted until its checksums pass, and without ``--pubkey`` nothing vouches for its
headers, so the archive is read twice:

1. every member header, before a byte is written: the member count, each member's declared
   size, the running total and the running compression ratio against :class:`Limits` (a header
   is judged when it is read, so a 5 GiB member in a 5 MB bundle is refused before its data is
   decompressed); an absolute name, ``..``, a link, a device or fifo, a name whose component or
   path does not fit the filesystem (``NAME_MAX``, ``PATH_MAX``), a member twice, and a member
   outside the bundle's one folder. The total must fit the destination's free space;
2. each regular file written into a fresh temporary folder beside the destination (created
   ``O_EXCL | O_NOFOLLOW``), its bytes counted while they stream: a member that yields more than
   it declared or than the limits allow is stopped there.

Every refusal of the bundle is one :class:`~kiln.errors.IntegrityError` line (exit 7); of the
destination (a path already there, too little free space) a ``ConfigError`` (exit 2). The
caller checks the folder (checksums, manifest) and only then :meth:`Extraction.commit` renames it to
``<dest>/<bundle folder>``: a new path, or an empty folder, never anything a user had there.
On any failure the temporary folder, and each folder kiln created for it, is removed.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import tarfile
import traceback
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NoReturn

from kiln.errors import ConfigError, IntegrityError, UnsafeBundleError, error_line
from kiln.ship.files import make_dirs, remove_made

GIB, MIB = 1 << 30, 1 << 20
CHUNK = MIB
TMP_PREFIX = ".kiln-extract-"
TMP_NAME_BYTES = len(TMP_PREFIX) + 8
# The limits are kiln verify's flags (kiln serve reads a bundle with the defaults: a trusted
# bundle over them is verified with --extract, and its folder served).
_IF_TRUSTED = "do not extract it, or if you trust it raise the limit with kiln verify --extract DIR"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    """What an archive may hold. The defaults fit any real bundle (a 70B LLM at int4 is ~40 GB in
    a few hundred files; weights compress less than 2:1) and refuse archive bombs."""

    max_members: int = 20_000
    max_member_bytes: int = 256 * GIB
    max_total_bytes: int = 512 * GIB
    max_ratio: float = 100.0  # unpacked bytes per compressed byte (gzip of zeros: ~1000)
    # Below this much unpacked data the ratio is not judged: a small bundle of JSON and text
    # compresses well, and so little cannot fill a disk.
    ratio_floor: int = 64 * MIB


DEFAULT_LIMITS = Limits()


def parse_size(text: str) -> int:
    """``"512"``, ``"64M"``, ``"2.5G"``, ``"1TiB"``: bytes (powers of 1024)."""
    found = _SIZE.match(text)
    if found is None:
        raise ConfigError(f"{text!r} is not a size; write bytes or a number with K, M, G or T (e.g. 64G)")
    number, unit = found.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))


def human(n: float) -> str:
    """Bytes in words: ``1536`` is ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f}".rstrip("0").rstrip(".") + f" {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class Plan:
    """What the header pass found: the bundle's one folder, its members in archive order, and the
    bytes they declare."""

    top: str
    members: list[tarfile.TarInfo]
    total: int


def _fs_limits(near: Path) -> tuple[int, int]:
    """``NAME_MAX`` and ``PATH_MAX`` of the filesystem that will hold ``near`` (255 and 4096
    where the system does not say)."""
    probe = near
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _quote(name: str, keep: int = 80) -> str:
    """A member's name for a one-line message: quoted (a newline shows as ``\\n``), cut if long."""
    return repr(name) if len(name) <= keep else f"{name[:keep]!r}... ({len(name)} characters)"


class _Scan:
    """Judges each member header as it is read (see the module's docstring, step 1)."""

    def __init__(self, bundle: Path, dest: Path, limits: Limits) -> None:
        self.bundle, self.limits = bundle, limits
        self.compressed = max(bundle.stat().st_size, 1)
        self.root = os.fsencode(os.path.abspath(dest))
        self.name_max, self.path_max = _fs_limits(dest)
        self.top = ""
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.total = 0
        self.count = 0

    def refuse(self, what: str, expected: str, unsafe: bool = False) -> NoReturn:
        cls = UnsafeBundleError if unsafe else IntegrityError
        raise cls(f"{self.bundle}: {what}; {expected}")

    def member(self, m: tarfile.TarInfo) -> None:
        lim = self.limits
        self.count += 1
        if self.count > lim.max_members:
            self.refuse(
                f"holds more than {lim.max_members} members",
                f"a kiln bundle holds a few files per artifact: {_IF_TRUSTED} --max-members",
            )
        self._name(m)
        self._kind(m)
        if m.size > lim.max_member_bytes:
            self.refuse(
                f"member {m.name!r} declares {human(m.size)}, over the limit of {human(lim.max_member_bytes)}",
                f"{_IF_TRUSTED} --max-file",
            )
        self.total += m.size
        if self.total > lim.max_total_bytes:
            self.refuse(
                f"its members declare more than {human(lim.max_total_bytes)} in all",
                f"{_IF_TRUSTED} --max-unpacked",
            )
        if self.total > max(lim.ratio_floor, lim.max_ratio * self.compressed):
            self.refuse(
                f"{human(self.compressed)} unpack to at least {human(self.total)}, over {lim.max_ratio:g}:1 "
                "(an archive bomb)",
                f"{_IF_TRUSTED} --max-ratio",
            )

    def _name(self, m: tarfile.TarInfo) -> None:
        name = m.name
        path = PurePosixPath(name)
        if name.startswith("/") or path.is_absolute():
            self.refuse(f"member {name!r} has an absolute path", "do not extract this archive", unsafe=True)
        if ".." in path.parts:
            self.refuse(f"member {name!r} climbs out with '..'", "do not extract this archive", unsafe=True)
        if "\0" in name or not path.parts:
            self.refuse(f"member {name!r} has an empty name or a NUL byte", "do not extract this archive", unsafe=True)
        if not self.top:
            self.top = path.parts[0]
        long = next((p for p in path.parts if len(os.fsencode(p)) > self.name_max), None)
        if long is not None:
            self.refuse(
                f"member {_quote(name)} has a name of {len(os.fsencode(long))} bytes, over this filesystem's "
                f"NAME_MAX of {self.name_max}",
                "kiln never packages such a name: do not extract this archive",
            )
        deepest = len(self.root) + 1 + max(len(os.fsencode(self.top)), TMP_NAME_BYTES) + len(os.fsencode(name))
        if deepest >= self.path_max:
            self.refuse(
                f"member {_quote(name)} would be a path of {deepest} bytes here, over this system's "
                f"PATH_MAX of {self.path_max}",
                "do not extract this archive (or, if you trust it, extract it into a shorter folder)",
            )
        if path.parts[0] != self.top or (m.isfile() and len(path.parts) < 2):
            self.refuse(f"member {name!r} is outside the bundle's folder {self.top!r}", "it was not written by kiln")

    def _kind(self, m: tarfile.TarInfo) -> None:
        if m.ischr() or m.isblk() or m.isfifo():
            self.refuse(f"member {m.name!r} is a device or fifo", "do not extract this archive", unsafe=True)
        if m.issym() or m.islnk():
            base = posixpath.dirname(m.name) if m.issym() else ""
            target = posixpath.normpath(posixpath.join(base, m.linkname))
            if m.linkname.startswith("/") or target.startswith("..") or PurePosixPath(target).parts[:1] != (self.top,):
                self.refuse(
                    f"member {m.name!r} links to {m.linkname!r}, outside the bundle",
                    "do not extract this archive",
                    unsafe=True,
                )
            self.refuse(f"member {m.name!r} is a link", "kiln bundles hold regular files only")
        if not (m.isfile() or m.isdir()):
            self.refuse(f"member {m.name!r} is not a regular file or folder", "kiln bundles hold regular files only")
        key = str(PurePosixPath(m.name))
        if key in self.files or (m.isfile() and key in self.dirs):
            self.refuse(f"member {m.name!r} appears twice", "the second would replace the first: fetch it again")
        parents = {str(p) for p in PurePosixPath(key).parents}
        if parents & self.files:
            self.refuse(f"member {m.name!r} is inside a member that is a file", "it was not written by kiln")
        self.dirs |= parents
        (self.files if m.isfile() else self.dirs).add(key)


def scan(tar: tarfile.TarFile, bundle: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> Plan:
    """Step 1: read and judge every header (no byte written); the members to extract."""
    check = _Scan(bundle, dest, limits)
    members = []
    while (m := tar.next()) is not None:
        check.member(m)
        members.append(m)
    if not members:
        raise IntegrityError(f"{bundle} is an empty archive; package the artifact again")
    return Plan(check.top, members, check.total)


@dataclass
class Extraction:
    """The bundle unpacked into ``folder`` (a temporary sibling of ``final``); :meth:`commit`
    renames it into place."""

    folder: Path
    final: Path
    committed: bool = False

    def commit(self) -> Path:
        """Rename the checked folder to ``final``: a new path, or an empty folder (which a rename
        replaces); anything else stays as it was and the bundle is refused."""
        try:
            os.rename(self.folder, self.final)
        except OSError as err:
            raise _occupied(self.final) from err
        self.committed = True
        return self.final


def _occupied(final: Path) -> ConfigError:
    return ConfigError(
        f"{final} already exists; kiln extracts into a new folder and never over one: "
        f"pass --extract a folder without {final.name} in it, or move {final} away"
    )


def _free_folder(final: Path) -> bool:
    if not os.path.lexists(final):
        return True
    return final.is_dir() and not final.is_symlink() and not any(final.iterdir())


@contextlib.contextmanager
def _reading(bundle: Path) -> Iterator[None]:
    """An archive that cannot be read is one line (exit 7); a write that fails is the machine's."""
    try:
        yield
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        if isinstance(err, OSError) and not isinstance(err, tarfile.TarError) and err.filename is not None:
            raise  # the machine (disk full, no permission), not the bundle: the CLI says so
        raise IntegrityError(f"{bundle} is not a readable gzipped tar ({err}); fetch it again") from err
    except (ValueError, OverflowError, IndexError, KeyError) as err:
        if not _raised_by_tarfile(err):
            raise
        # tarfile parses a pax header's numbers (GNU.sparse.map, .size) with a bare int()
        raise IntegrityError(
            f"{bundle} has a malformed tar header ({error_line(err, 120)}); fetch it again, do not extract it"
        ) from err


def _raised_by_tarfile(err: BaseException) -> bool:
    """Whether ``err`` came from inside the tarfile module (a header it could not parse)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename) == os.path.abspath(tarfile.__file__)


@contextlib.contextmanager
def extract(bundle: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[Extraction]:
    """Unpack ``bundle`` into a temporary folder in ``dest`` (see the module's docstring); the
    caller checks it and calls :meth:`Extraction.commit`. Without a commit (an exception, or a
    caller that only looked) the folder and each folder this created are removed."""
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"{dest} is a file, not a folder; pass --extract a folder to unpack the bundle into")
    made: list[Path] = []
    extraction: Extraction | None = None
    try:
        with _reading(bundle), tarfile.open(bundle, "r:gz") as tar:
            plan = scan(tar, bundle, dest, limits)
            final = dest / plan.top
            if not _free_folder(final):
                raise _occupied(final)
            made = make_dirs(dest)
            _check_space(dest, plan.total, bundle)
            extraction = Extraction(dest / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}", final)
            extraction.folder.mkdir(0o755)
            _write_members(tar, plan, extraction.folder, limits, bundle)
        yield extraction
    finally:
        if extraction is not None and not extraction.committed:
            shutil.rmtree(extraction.folder, ignore_errors=True)
        if extraction is None or not extraction.committed:
            remove_made(made)


def _check_space(dest: Path, total: int, bundle: Path) -> None:
    free = shutil.disk_usage(dest).free
    if total > free:
        raise ConfigError(
            f"{bundle} unpacks to {human(total)} and {dest} has {human(free)} free; "
            "free some space or extract it elsewhere (--extract DIR; kiln serve: TMPDIR)"
        )


def _write_members(tar: tarfile.TarFile, plan: Plan, into: Path, limits: Limits, bundle: Path) -> None:
    """Step 2: each folder and regular file under ``into``, bytes counted as they stream."""
    written_total = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for m in plan.members:
        rel = PurePosixPath(m.name).relative_to(plan.top)
        if rel == PurePosixPath("."):
            continue
        target = into.joinpath(*rel.parts)
        if m.isdir():
            target.mkdir(0o755, parents=True, exist_ok=True)
            continue
        target.parent.mkdir(0o755, parents=True, exist_ok=True)
        source = tar.extractfile(m)
        assert source is not None  # a regular file (scan refused everything else)
        allowed = min(m.size, limits.max_member_bytes)
        written = 0
        with source, os.fdopen(os.open(target, flags, 0o644), "wb") as out:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                written_total += len(chunk)
                if written > allowed or written_total > min(plan.total, limits.max_total_bytes):
                    raise IntegrityError(
                        f"{bundle}: member {m.name!r} yields more than the {human(allowed)} it declares; "
                        "its header lies: do not extract this archive"
                    )
                out.write(chunk)
        if written != m.size:
            raise IntegrityError(f"{bundle}: member {m.name!r} ends after {written} of {m.size} bytes; fetch it again")
