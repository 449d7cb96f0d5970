"""Property: whatever bytes ``kiln verify`` is handed as a bundle (random members with odd names,
links, devices and headers that declare huge sizes; a real bundle truncated, with bytes flipped in
its gzip stream or its tar headers; its SHA256SUMS and manifest.json rewritten), it ends in a
verified artifact or one ``KilnError`` line with a documented exit code, never another exception,
and nothing is written outside the new folder: a failure leaves the destination exactly as it
was (a user's file byte for byte, a user's folder of the bundle's name untouched).

Seeded (``derandomize``) and bounded: 2,300 bundles, each a few KiB built in
memory and verified in-process. The hand-made zoo (each class of hostile bundle, through the CLI)
is test_archive.py; this is what nobody thought of.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.cli import main
from kiln.config import Tolerance
from kiln.errors import IntegrityError, KilnError
from kiln.manifest import FileEntry, GoldenRecord
from kiln.ship.archive import Limits
from kiln.ship.verify import Verified, verify
from tests.bench.synthetic import manifest

TOP = "fuzz-eager-fp32"
DOCUMENTED = {2, 3, 5, 7}  # bad input, a failed gate, cannot run here, integrity
USER_FILE = b"a user's notes\n"
# Small limits, so that generated headers reach each of them; the defaults are test_archive.py's.
LIMITS = Limits(max_members=40, max_member_bytes=1 << 20, max_total_bytes=2 << 20, max_ratio=50, ratio_floor=256 << 10)
FUZZ = settings(
    derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck), max_examples=2000
)
KINDS = [
    tarfile.REGTYPE,
    tarfile.AREGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.CONTTYPE,
    tarfile.GNUTYPE_SPARSE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.XGLTYPE,
    b"Z",  # no such type
]


def _good_files() -> dict[str, bytes]:
    """A bundle's folder as kiln package writes it: an artifact file, a golden case, the
    manifest listing both, and SHA256SUMS over everything."""
    model = b"\x08\x01" * 300
    case = b"golden case " * 20
    files = [
        FileEntry(path="model.onnx", sha256=hashlib.sha256(model).hexdigest(), bytes=len(model)),
        FileEntry(path="golden/case0.npz", sha256=hashlib.sha256(case).hexdigest(), bytes=len(case)),
    ]
    golden = GoldenRecord(cases=1, kinds=["seeded"], bytes=len(case), tolerance=Tolerance(max_rel=1e-4), screened=True)
    record = manifest("eager-fp32", model="fuzz", files=files, golden=golden, size_bytes=len(model))
    out = {"model.onnx": model, "golden/case0.npz": case, "manifest.json": json.dumps(record.to_json()).encode()}
    return _with_sums(out)


def _with_sums(files: dict[str, bytes]) -> dict[str, bytes]:
    files = {k: v for k, v in files.items() if k != "SHA256SUMS"}
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n" for rel, data in sorted(files.items()))
    return {**files, "SHA256SUMS": sums.encode()}


GOOD = _good_files()


def _header(name: str, kind: bytes, size: int, link: str = "", fmt: int = tarfile.PAX_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode, info.mtime = kind, size, link, 0o644, 0
    return info.tobuf(fmt, "utf-8", "surrogateescape")


def _member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE, size: int | None = None, link: str = "") -> bytes:
    """One raw member: its header (declaring ``size``, the data's own by default) and the data,
    padded to the tar's 512-byte blocks, whatever the header says."""
    padded = data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    return _header(name, kind, len(data) if size is None else size, link) + padded


def _raw_tar(files: dict[str, bytes]) -> bytes:
    body = _member(TOP, b"", tarfile.DIRTYPE) + b"".join(_member(f"{TOP}/{rel}", data) for rel, data in files.items())
    return body + b"\0" * (2 * tarfile.BLOCKSIZE)


def _gz(raw: bytes, level: int = 9) -> bytes:
    return gzip.compress(raw, compresslevel=level, mtime=0)


# ---- strategies ----

name_parts = st.one_of(
    st.sampled_from([TOP, "model.onnx", "golden", "SHA256SUMS", "manifest.json", "..", ".", "", "victim"]),
    st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=12),
    st.text(alphabet="\0\n\r\t\\ ~*?", min_size=1, max_size=3),
    st.integers(250, 300).map(lambda n: "n" * n),  # around NAME_MAX
)
names = st.one_of(
    st.sampled_from([f"{TOP}/{rel}" for rel in GOOD] + [TOP, f"{TOP}/", "/etc/passwd", f"{TOP}/../x", "./x"]),
    st.lists(name_parts, min_size=1, max_size=5).map("/".join),
    st.lists(name_parts, max_size=3).map(lambda parts: "/".join([TOP, *parts])),
    st.integers(1, 40).map(lambda n: f"{TOP}/" + "/".join(["d" * 120] * n)),  # around PATH_MAX
)
sizes = st.one_of(st.integers(0, 4096), st.sampled_from([1 << 20, (1 << 20) + 1, 3 << 20, 5 << 30, 8**11 - 1]))


@st.composite
def members(draw: st.DrawFn) -> bytes:
    name = draw(names)
    kind = draw(st.sampled_from(KINDS))
    data = draw(st.binary(max_size=700)) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else b""
    size = draw(st.one_of(st.none(), sizes))
    link = draw(st.one_of(st.just(""), names, st.sampled_from(["/", "..", f"../{TOP}", f"{TOP}/model.onnx"])))
    try:
        return _member(name, data, kind, size, link)
    except (ValueError, UnicodeEncodeError):  # tarfile cannot write that header: what a user cannot send either
        return _member(f"{TOP}/x", data, kind, size, link)


pax_records = st.lists(
    st.tuples(
        st.sampled_from(
            ["path", "linkpath", "size", "mtime", "uid", "hdrcharset", "GNU.sparse.map", "GNU.sparse.size"]
        ),
        st.one_of(
            st.sampled_from([f"{TOP}/model.onnx", "../../x", "/etc/x", "99999999999999", "-1", "1e9", "BINARY"]),
            st.text(max_size=20),
        ),
    ),
    min_size=1,
    max_size=3,
)


@st.composite
def pax(draw: st.DrawFn) -> bytes:
    """A pax extended header (its records well-formed, or cut, or with a wrong length) before a
    member it rewrites: its name, size, link."""
    records = b""
    for key, value in draw(pax_records):
        body = f" {key}={value}\n".encode("utf-8", "surrogateescape")
        length = len(body) + len(str(len(body)))
        length += len(str(length)) - len(str(len(body)))
        records += str(length + draw(st.sampled_from([0, 0, 0, 1, -3]))).encode() + body
    records = records[: draw(st.one_of(st.none(), st.integers(0, len(records))))]
    target = draw(st.sampled_from([f"{TOP}/model.onnx", f"{TOP}/x", f"{TOP}/golden"]))
    return _member(f"{TOP}/PaxHeader", records, tarfile.XHDTYPE) + _member(target, draw(st.binary(max_size=64)))


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """A gzipped tar of random members, some of a real bundle's."""
    good = [_member(f"{TOP}/{rel}", data) for rel, data in GOOD.items()]
    chosen = draw(st.lists(st.one_of(members(), pax(), st.sampled_from(good)), min_size=0, max_size=8))
    if draw(st.booleans()):  # the whole real bundle, with the random members among its own
        for member in good:
            chosen.insert(draw(st.integers(0, len(chosen))), member)
    end = draw(st.sampled_from([b"\0" * 1024, b"", b"\0" * 512, b"\xff" * 512]))
    return _gz(b"".join(chosen) + end, draw(st.integers(0, 9)))


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A real bundle truncated, or with bytes flipped in its tar (a header's checksum made right
    again half of the time, so the change gets past tarfile) or in its gzip stream."""
    raw = bytearray(_raw_tar(GOOD))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            block = at - at % tarfile.BLOCKSIZE
            raw[block + 148 : block + 156] = b" " * 8
            raw[block + 148 : block + 155] = b"%06o\0" % (sum(raw[block : block + 512]) & 0o777777)
    data = bytearray(_gz(bytes(raw)))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data[:cut])


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8), st.just("a\nb")
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _edit(data: Any, path: list[int], value: Any) -> Any:
    """``data`` with the node that ``path`` leads to (each step an index into a dict's keys or a
    list) replaced by ``value``."""
    if not path or not isinstance(data, dict | list) or not data:
        return value
    keys = list(data) if isinstance(data, dict) else list(range(len(data)))
    key = keys[path[0] % len(keys)]
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[key] = _edit(data[key], path[1:], value)
    return copy


@st.composite
def rewritten(draw: st.DrawFn) -> bytes:
    """A well-formed archive whose SHA256SUMS or manifest.json says something else: random
    lines or bytes, a manifest field replaced by any JSON value, nesting thousands deep; the sums
    recomputed or not."""
    files = dict(GOOD)
    record = json.loads(files["manifest.json"])
    choice = draw(st.sampled_from(["manifest", "manifest", "sums", "deep", "file"]))
    if choice == "manifest":
        path = draw(st.lists(st.integers(0, 50), max_size=4))
        files["manifest.json"] = json.dumps(_edit(record, path, draw(json_values))).encode()
    elif choice == "sums":
        lines = st.one_of(st.text(max_size=90), st.sampled_from([f"{'0' * 64}  ../x", f"{'a' * 64} *{'n' * 300}"]))
        text = "\n".join(draw(st.lists(lines, max_size=4)))
        files["SHA256SUMS"] = draw(st.one_of(st.just(text.encode()), st.binary(max_size=80)))
    elif choice == "deep":
        depth = draw(st.sampled_from([100, 10_000, 200_000]))
        files["manifest.json"] = b"[" * depth + b"]" * depth
    else:
        rel = draw(st.sampled_from([rel for rel in GOOD if rel != "SHA256SUMS"] + ["extra.bin", "golden/x"]))
        files[rel] = draw(st.binary(max_size=64))
    if choice != "sums" and draw(st.booleans()):
        files = _with_sums(files)
    return _gz(_raw_tar(files))


bundles = st.one_of(hostile(), damaged(), rewritten())
dests = st.sampled_from(["absent", "empty", "user file", "user folder"])


# ---- the property ----


def _snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


# A RAM folder where there is one: thousands of small writes and removals take a third of the time.
MEMORY = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kiln-fuzz-", dir=MEMORY) as folder:
        yield Path(folder)


def _prepare(scratch: Path, data: bytes, state: str) -> tuple[Path, Path, Path]:
    """A fresh work folder holding the bundle and a destination in ``state``."""
    work = scratch / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    bundle, dest = work / "evil.tar.gz", work / "dest"
    bundle.write_bytes(data)
    if state != "absent":
        dest.mkdir()
    if state == "user file":
        (dest / "notes.txt").write_bytes(USER_FILE)
    if state == "user folder":
        (dest / TOP).mkdir()
        (dest / TOP / "notes.txt").write_bytes(USER_FILE)
    return work, bundle, dest


def _check(work: Path, bundle: Path, dest: Path, before: dict[str, bytes | None]) -> str:
    """Verify ``bundle`` into ``dest``: 'ok' or the error's exit code; the folder is checked after."""
    try:
        done = verify(bundle, dest, limits=LIMITS)
    except KilnError as err:
        message = str(err)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert err.exit_code in DOCUMENTED, (err.exit_code, message)
        assert _snapshot(work) == before, message  # nothing written, nothing of the user's touched
        return str(err.exit_code)
    assert isinstance(done, Verified) and done.folder == dest / TOP
    after = _snapshot(work)
    new = {path for path in after if path not in before}
    assert all(path in ("dest", f"dest/{TOP}") or path.startswith(f"dest/{TOP}/") for path in new), new
    assert {k: after[k] for k in before} == before
    return "ok"


@FUZZ
@given(bundles, dests)
def test_every_bundle_is_verified_or_refused_in_one_line(scratch: Path, data: bytes, state: str) -> None:
    work, bundle, dest = _prepare(scratch, data, state)
    _check(work, bundle, dest, _snapshot(work))


@settings(FUZZ, max_examples=300)
@given(bundles)
def test_kiln_verify_prints_one_error_line_and_a_documented_code(scratch: Path, data: bytes) -> None:
    work, bundle, dest = _prepare(scratch, data, "user file")
    before = _snapshot(work)
    result = CliRunner().invoke(main, ["verify", str(bundle), "--extract", str(dest)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code:
        errors = [line for line in result.output.splitlines() if line.startswith("kiln: error:")]
        assert len(errors) == 1 and "Traceback" not in result.output, result.output
        assert result.exit_code in DOCUMENTED, result.output
        assert _snapshot(work) == before


def test_the_unchanged_bundle_verifies(scratch: Path) -> None:
    """The fuzz's starting point is a bundle kiln accepts (else every case above is a refusal)."""
    work, bundle, dest = _prepare(scratch, _gz(_raw_tar(GOOD)), "user file")
    assert _check(work, bundle, dest, _snapshot(work)) == "ok"
    assert (dest / TOP / "model.onnx").read_bytes() == GOOD["model.onnx"]


# What the fuzz found, each held by its own case.


def _refused(scratch: Path, files: dict[str, bytes], code: int, state: str = "user file") -> str:
    work, bundle, dest = _prepare(scratch, _gz(_raw_tar(files)), state)
    before = _snapshot(work)
    with pytest.raises(KilnError) as caught:
        verify(bundle, dest, limits=LIMITS)
    assert caught.value.exit_code == code and "\n" not in str(caught.value), str(caught.value)
    assert _snapshot(work) == before
    return str(caught.value)


def test_a_manifest_nested_thousands_deep_is_exit_7_not_a_recursion_error(scratch: Path) -> None:
    deep = {**GOOD, "manifest.json": b"[" * 100_000 + b"]" * 100_000}
    assert "manifest.json is missing or not JSON" in _refused(scratch, _with_sums(deep), 7)


def test_a_manifest_whose_signature_is_not_one_is_exit_7_not_a_type_error(scratch: Path) -> None:
    record = json.loads(GOOD["manifest.json"])
    for signature in ({"inputs": None, "dims": {}}, {"inputs": [], "dims": None}, {"dims": {}}, {"inputs": []}):
        files = _with_sums({**GOOD, "manifest.json": json.dumps({**record, "signature": signature}).encode()})
        assert "manifest.json does not validate (signature." in _refused(scratch, files, 7)


def test_a_bundle_that_cannot_run_here_is_not_left_extracted(scratch: Path) -> None:
    """Exit 5 came after the rename: the refused artifact stayed in --extract's folder."""
    record = json.loads(GOOD["manifest.json"])
    files = _with_sums({**GOOD, "manifest.json": json.dumps({**record, "target": "no-such-target"}).encode()})
    assert "has no target 'no-such-target'" in _refused(scratch, files, 5, state="absent")


def test_names_and_breaches_with_a_newline_stay_on_one_line(scratch: Path) -> None:
    extra = _refused(scratch, {**GOOD, "a\nb.bin": b"x"}, 7)
    assert "a\\nb.bin is not listed in SHA256SUMS" in extra
    record = json.loads(GOOD["manifest.json"])
    record["gate"] = {**record["gate"], "passed": False, "breaches": ["output 'y'\nmax_rel 1 > 0.1"]}
    failed = _refused(scratch, _with_sums({**GOOD, "manifest.json": json.dumps(record).encode()}), 3)
    assert "output 'y'\\nmax_rel 1 > 0.1" in failed


def test_a_pax_header_tarfile_cannot_parse_is_exit_7_not_a_value_error(scratch: Path) -> None:
    """tarfile reads GNU.sparse.map and GNU.sparse.size with a bare int()."""
    for key in ("GNU.sparse.map", "GNU.sparse.size"):
        body = f" {key}=x\n".encode()
        record = str(len(body) + 2).encode() + body
        raw = _member(f"{TOP}/PaxHeader", record, tarfile.XHDTYPE) + _raw_tar(GOOD)
        work, bundle, dest = _prepare(scratch, _gz(raw), "user file")
        before = _snapshot(work)
        with pytest.raises(IntegrityError, match=r"has a malformed tar header \(ValueError: invalid literal"):
            verify(bundle, dest, limits=LIMITS)
        assert _snapshot(work) == before
