"""A zoo of hostile bundles, built here, against the one reader (:mod:`kiln.ship.archive`): bombs
(a member over the size limit, a header that declares 5 GiB in a few bytes, a compression ratio,
too many members), links, devices, traversal, names that do not fit the filesystem, a truncated
archive, a zip, a header that yields more than it declares, a SHA256SUMS that is not UTF-8, a bomb
signed with another key. Each is one ``kiln: error:`` line and exit 7, and leaves the destination
exactly as it was: a user's file in it byte for byte, nothing else anywhere under ``tmp_path``.
Then ``--extract`` itself: always a new folder, never over a user's."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from kiln.errors import ConfigError, IntegrityError
from kiln.ship.archive import DEFAULT_LIMITS, Limits, extract, human, parse_size
from kiln.ship.bundle import PackageOptions, package
from kiln.ship.verify import extract_verified
from tests.ship.test_bundle import cli, one_error_line

TOP = "digits-eager-fp32"
USER_FILE = b"a user's notes\n"
SMALL = Limits(max_members=50, max_member_bytes=1 << 20, max_total_bytes=2 << 20, max_ratio=20, ratio_floor=1 << 20)


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def entry(name: str, data: bytes | None = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (folders: None); links are not followed."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """A destination that already holds a user's file."""
    folder = tmp_path / "dest"
    folder.mkdir()
    (folder / "notes.txt").write_bytes(USER_FILE)
    return folder


def refused(tmp_path: Path, dest: Path, data: bytes, *flags: str, exit_code: int = 7) -> str:
    """Verify ``data`` as a bundle with ``--extract dest``: one error line, ``exit_code``, and
    nothing under ``tmp_path`` changed but the bundle itself."""
    bundle = tmp_path / "evil.tar.gz"
    bundle.write_bytes(data)
    before = snapshot(tmp_path)
    code, out = cli("verify", str(bundle), "--extract", str(dest), *flags)
    line = one_error_line(out)
    assert code == exit_code, out
    assert snapshot(tmp_path) == before  # no .kiln-extract-* left, the user's file byte for byte
    assert "verified" not in out
    return line


# Bombs: the limits, judged from the headers before a byte is written.


def test_a_member_over_the_size_limit_is_refused_before_anything_is_written(tmp_path: Path, dest: Path) -> None:
    bomb = tar_bytes([entry(f"{TOP}/zeros.bin", bytes(10 << 20))])  # 10 MiB of zeros in ~10 KB
    line = refused(tmp_path, dest, bomb, "--max-file", "1M")
    assert (
        "'digits-eager-fp32/zeros.bin' declares 10 MiB, over the limit of 1 MiB" in line
        and "kiln verify --extract DIR --max-file" in line
    )


def test_a_header_that_declares_5_gib_in_a_tiny_bundle_is_refused_at_once(tmp_path: Path, dest: Path) -> None:
    info = tarfile.TarInfo(f"{TOP}/model.bin")
    info.size = 5 << 30  # the tester's bomb: its data is never decompressed, only its header read
    head = io.BytesIO()
    with gzip.GzipFile(fileobj=head, mode="wb") as gz:
        gz.write(info.tobuf(tarfile.PAX_FORMAT) + bytes(1 << 20))
    start = time.perf_counter()
    line = refused(tmp_path, dest, head.getvalue())  # the default limits: a ratio of ~5000:1
    assert time.perf_counter() - start < 5
    assert "unpack to at least 5 GiB, over 100:1 (an archive bomb)" in line and "--max-ratio" in line


def test_the_compression_ratio_is_bounded(tmp_path: Path, dest: Path) -> None:
    bundle = tmp_path / "evil.tar.gz"
    bundle.write_bytes(tar_bytes([entry(f"{TOP}/a.bin", bytes(900 << 10)), entry(f"{TOP}/b.bin", bytes(900 << 10))]))
    # each member and the total within SMALL's limits; the second pushes the ratio past 20:1
    with pytest.raises(IntegrityError, match="over 20:1 \\(an archive bomb\\)"):
        extract_verified(bundle, dest, limits=SMALL)
    assert snapshot(dest) == {"notes.txt": USER_FILE}


def test_the_total_is_bounded(tmp_path: Path, dest: Path) -> None:
    members = [entry(f"{TOP}/{i}.bin", os.urandom(600 << 10)) for i in range(4)]  # random: no ratio to judge
    line = refused(tmp_path, dest, tar_bytes(members), "--max-unpacked", "2M")
    assert "declare more than 2 MiB in all" in line and "--max-unpacked" in line


def test_too_many_members_are_refused_at_the_limit(tmp_path: Path, dest: Path) -> None:
    members = [entry(f"{TOP}/{i}", b"") for i in range(2000)]
    start = time.perf_counter()
    line = refused(tmp_path, dest, tar_bytes(members), "--max-members", "100")
    assert time.perf_counter() - start < 5
    assert "holds more than 100 members" in line and "--max-members" in line


def test_a_member_that_yields_more_than_its_header_declares_is_stopped(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "evil.tar.gz"
    bundle.write_bytes(tar_bytes([entry(f"{TOP}/small.bin", b"12345678")]))
    # A reader whose member streams 3 MiB where its header said 8 bytes.
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: io.BytesIO(bytes(3 << 20)))
    with pytest.raises(IntegrityError, match="yields more than the 8 B it declares"):
        extract_verified(bundle, dest)
    assert snapshot(dest) == {"notes.txt": USER_FILE}


# What a bundle may hold: regular files and folders under one top folder, with names that fit.


@pytest.mark.parametrize(
    ("member", "what"),
    [
        (entry(f"{TOP}/../evil.txt"), "climbs out with '..'"),
        (entry(f"{TOP}/a/../../evil.txt"), "climbs out with '..'"),
        (entry("/tmp/evil.txt"), "absolute path"),
        (entry(f"{TOP}/link", None, tarfile.SYMTYPE, "../../evil.txt"), "outside the bundle"),
        (entry(f"{TOP}/abs-link", None, tarfile.SYMTYPE, "/etc/passwd"), "outside the bundle"),
        (entry(f"{TOP}/alias", None, tarfile.SYMTYPE, "model.onnx"), "is a link"),
        (entry(f"{TOP}/hard", None, tarfile.LNKTYPE, "etc/passwd"), "outside the bundle"),
        (entry(f"{TOP}/hard-in", None, tarfile.LNKTYPE, f"{TOP}/model.onnx"), "is a link"),
        (entry(f"{TOP}/tty", None, tarfile.CHRTYPE), "device or fifo"),
        (entry(f"{TOP}/disk", None, tarfile.BLKTYPE), "device or fifo"),
        (entry(f"{TOP}/pipe", None, tarfile.FIFOTYPE), "device or fifo"),
        (entry(f"{TOP}/" + "n" * 300), "has a name of 300 bytes, over this filesystem's NAME_MAX of 255"),
        (entry(f"{TOP}/" + "/".join(["d" * 200] * 25) + "/f"), "over this system's PATH_MAX of 4096"),
        (entry("other/evil.txt"), "outside the bundle's folder"),
        (entry(f"{TOP}/model.onnx/inside"), "inside a member that is a file"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_member_kiln_never_packages_is_refused_exit_7(tmp_path: Path, dest: Path, member: tuple, what: str) -> None:
    data = tar_bytes([entry(f"{TOP}/model.onnx", b"onnx"), member])
    line = refused(tmp_path, dest, data)
    assert what in line
    assert not (tmp_path.parent / "evil.txt").exists()


def test_a_member_twice_is_refused(tmp_path: Path, dest: Path) -> None:
    data = tar_bytes([entry(f"{TOP}/model.onnx", b"one"), entry(f"{TOP}/model.onnx", b"two")])
    assert "appears twice" in refused(tmp_path, dest, data)


def test_a_truncated_archive_and_a_zip_are_not_bundles(tmp_path: Path, dest: Path) -> None:
    whole = tar_bytes([entry(f"{TOP}/weights.bin", os.urandom(256 << 10))])
    assert "is not a readable gzipped tar" in refused(tmp_path, dest, whole[: len(whole) // 2])
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{TOP}/zeros.bin", bytes(10 << 20))  # a zip bomb is not even opened
    assert "is not a readable gzipped tar" in refused(tmp_path, dest, archive.getvalue())


def test_a_sha256sums_that_is_not_utf8_is_one_line_exit_7(tmp_path: Path, dest: Path) -> None:
    data = tar_bytes([entry(f"{TOP}/SHA256SUMS", b"\xff\xfe" + b"0" * 64 + b"  model.onnx\n")])
    assert "SHA256SUMS is not UTF-8 text (byte 0)" in refused(tmp_path, dest, data)


def test_a_bomb_signed_with_another_key_is_refused_before_it_is_opened(tmp_path: Path, dest: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    assert cli("keygen", "-o", str(keys / "a"))[0] == 0 and cli("keygen", "-o", str(keys / "b"))[0] == 0
    bomb = tmp_path / "evil.tar.gz"
    bomb.write_bytes(tar_bytes([entry(f"{TOP}/zeros.bin", bytes(10 << 20))]))
    from kiln.ship.keys import sign

    sign(bomb, keys / "a.pem")
    before = snapshot(tmp_path)
    code, out = cli("verify", str(bomb), "--pubkey", str(keys / "b.pub"), "--extract", str(dest))
    assert code == 7 and "does not verify" in one_error_line(out)
    assert snapshot(tmp_path) == before


# --extract: a new folder, never over a user's.


@pytest.fixture(scope="module")
def good_bundle(digits_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return package(digits_build / "eager-fp32", PackageOptions(out=tmp_path_factory.mktemp("dist"))).bundle


def test_extract_never_replaces_a_users_folder_or_file(good_bundle: Path, tmp_path: Path, dest: Path) -> None:
    victim = dest / TOP
    victim.mkdir()
    (victim / "thesis.tex").write_bytes(USER_FILE)
    line = refused(tmp_path, dest, good_bundle.read_bytes(), exit_code=2)
    assert f"{victim} already exists" in line and "--extract" in line
    (victim / "thesis.tex").unlink()
    victim.rmdir()
    victim.write_bytes(USER_FILE)  # a file of that name
    assert f"{victim} already exists" in refused(tmp_path, dest, good_bundle.read_bytes(), exit_code=2)
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no .old-* or .kiln-extract-*


def test_extract_creates_a_new_folder_or_fills_an_empty_one(good_bundle: Path, tmp_path: Path, dest: Path) -> None:
    code, out = cli("verify", str(good_bundle), "--extract", str(tmp_path / "new" / "place"))
    assert code == 0 and (tmp_path / "new" / "place" / TOP / "manifest.json").is_file(), out
    (dest / TOP).mkdir()
    assert extract_verified(good_bundle, dest) == dest / TOP
    assert (dest / TOP / "SHA256SUMS").is_file() and (dest / "notes.txt").read_bytes() == USER_FILE


def test_extract_into_a_file_names_the_flag(good_bundle: Path, tmp_path: Path, dest: Path) -> None:
    line = refused(tmp_path, dest / "notes.txt", good_bundle.read_bytes(), exit_code=2)
    assert "is a file, not a folder; pass --extract a folder" in line and "--out" not in line


def test_a_failed_extraction_removes_the_folders_it_made(tmp_path: Path) -> None:
    bundle = tmp_path / "evil.tar.gz"
    bundle.write_bytes(tar_bytes([entry(f"{TOP}/model.onnx", b"onnx")]))  # no SHA256SUMS
    with pytest.raises(IntegrityError, match="has no SHA256SUMS"):
        extract_verified(bundle, tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()
    with pytest.raises(IntegrityError), extract(bundle, tmp_path / "c", SMALL) as unpacked:
        assert (unpacked.folder / "model.onnx").read_bytes() == b"onnx"  # written, bytes counted
        raise IntegrityError("the caller's check failed")
    assert not (tmp_path / "c").exists()


def test_the_help_states_the_default_limits() -> None:
    code, out = cli("verify", "--help")
    flat = " ".join(out.split())
    assert code == 0
    limits = DEFAULT_LIMITS
    assert f"--max-members INTEGER RANGE Most members a bundle may hold (default {limits.max_members})" in flat
    assert f"(default {human(limits.max_member_bytes)})" in flat.split("--max-file", 1)[1][:80]
    assert f"(default {human(limits.max_total_bytes)})" in flat.split("--max-unpacked", 1)[1][:80]
    assert f"first {human(limits.ratio_floor)} (default {limits.max_ratio:g})" in flat


def test_sizes_parse_and_print() -> None:
    assert parse_size("512") == 512 and parse_size("64M") == 64 << 20 and parse_size("1.5GiB") == 3 << 29
    assert human(10 << 20) == "10 MiB" and human(1536) == "1.5 KiB" and human(5 << 40) == "5 TiB"
    with pytest.raises(ConfigError, match="is not a size"):
        parse_size("lots")


def test_kiln_serve_reads_a_bundle_under_the_same_limits_and_flags(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    bundle = tmp_path / "evil.tar.gz"
    bundle.write_bytes(tar_bytes([entry(f"{TOP}/{i}", b"") for i in range(200)]))
    code, out = cli("serve", str(bundle), "--port", "0", "--max-members", "100")
    line = one_error_line(out)
    assert code == 7, out
    assert "holds more than 100 members" in line and "--max-members" in line
