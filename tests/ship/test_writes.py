"""Writes that never lose data: ``kiln package`` refuses a missing key before writing anything,
replaces a signed bundle and its ``.sig`` together or not at all, and leaves ``-o`` exactly as it
was when it fails; ``kiln keygen -o DIR/`` makes the folder, and a failed keygen leaves nothing;
``kiln verify`` of an artifact folder refuses a file its manifest does not list, as a bundle's
check does."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from kiln.ship.keys import verify_signature
from tests.ship.test_archive import snapshot
from tests.ship.test_bundle import cli, copy_model, one_error_line

KEY = "onnxruntime-fp32"


@pytest.fixture
def signed(digits_build: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A private copy of one artifact, a key pair, and ``dist/`` holding its signed bundle."""
    model = copy_model(digits_build, tmp_path, (KEY,))
    assert cli("keygen", "-o", f"{tmp_path / 'keys'}/")[0] == 0
    code, out = cli(
        "package", str(model / KEY), "-o", str(tmp_path / "dist"), "--sign", str(tmp_path / "keys" / "kiln-signing.pem")
    )
    assert code == 0, out
    return model / KEY, tmp_path / "keys", tmp_path / "dist"


def test_sign_with_a_missing_key_writes_nothing(digits_build: Path, tmp_path: Path) -> None:
    model = copy_model(digits_build, tmp_path, (KEY,))
    code, out = cli(
        "package", str(model / KEY), "-o", str(tmp_path / "dist" / "new"), "--sign", str(tmp_path / "missing.pem")
    )
    assert code == 2 and "cannot read the signing key" in one_error_line(out)
    assert not (tmp_path / "dist").exists()


def test_a_signed_bundle_and_its_sig_are_replaced_together_or_not_at_all(
    signed: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, keys, dist = signed
    before = snapshot(dist)
    assert len(before) == 2  # the bundle and its .sig
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")  # the bundle's bytes change
    code, out = cli("package", str(folder), "-o", str(dist), "--sign", str(keys / "missing.pem"))
    assert code == 2 and "cannot read the signing key" in one_error_line(out)
    assert snapshot(dist) == before  # the old pair, byte for byte: neither replaced nor deleted
    code, out = cli("package", str(folder), "-o", str(dist), "--sign", str(keys / "kiln-signing.pem"))
    assert code == 0 and "wrote" in out, out
    after = snapshot(dist)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)  # both new
    verify_signature(next(dist.glob("*.tar.gz")), keys / "kiln-signing.pub")


def test_a_package_that_fails_while_writing_leaves_dist_as_it_was(
    signed: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, keys, dist = signed
    before = snapshot(dist)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    real = os.replace

    def disk_full(src: object, dst: object) -> None:
        if str(dst).endswith(".sig"):  # the bundle's rename passed; the signature's fails
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", disk_full)
    code, out = cli("package", str(folder), "-o", str(dist), "--sign", str(keys / "kiln-signing.pem"))
    assert code == 2 and "No space left" in one_error_line(out)
    assert snapshot(dist) == before  # the old bundle put back beside its .sig; no .tmp-* left


def test_one_bad_artifact_of_several_writes_no_bundle(digits_build: Path, tmp_path: Path) -> None:
    model = copy_model(digits_build, tmp_path, (KEY, "eager-fp32"))
    (model / KEY / "model.onnx").write_bytes(b"changed")
    code, out = cli("package", str(model), "-o", str(tmp_path / "dist"))
    assert code == 7 and "run kiln build again" in one_error_line(out)
    assert not (tmp_path / "dist").exists()


def test_keygen_into_a_folder_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = cli("keygen", "-o", "keys/")  # absent: made, not ./keys.pem
    assert code == 0, out
    assert not Path("keys.pem").exists() and Path("keys/kiln-signing.pub").is_file()
    assert stat.S_IMODE(Path("keys/kiln-signing.pem").stat().st_mode) == 0o600
    assert cli("keygen", "-o", "keys", "--force")[0] == 0  # an existing folder, no slash
    assert cli("keygen", "-o", "keys/release")[0] == 0 and Path("keys/release.pem").is_file()
    code, out = cli("keygen", "-o", "missing/release")
    assert code == 2 and "missing does not exist; create it, or pass -o missing/" in one_error_line(out)
    Path("file").write_text("x")
    code, out = cli("keygen", "-o", "file/")
    assert code == 2 and "file" in one_error_line(out) and Path("file").read_text() == "x"
    code, out = cli("keygen", "-o", "keys/")
    assert code == 2 and "--force" in one_error_line(out)
    assert not Path("missing").exists()


def test_a_failed_keygen_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kiln.ship.keys as keys

    real, calls = keys.write_temp, []

    def second_fails(path: Path, data: bytes, mode: int) -> Path:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, mode)

    monkeypatch.setattr(keys, "write_temp", second_fails)
    code, out = cli("keygen", "-o", f"{tmp_path / 'keys'}/")
    assert code == 2 and "No space left" in one_error_line(out)
    assert snapshot(tmp_path) == {}  # no half pair, no temporary file, not even the folder


def test_verify_of_an_artifact_folder_refuses_a_file_it_does_not_list(digits_build: Path, tmp_path: Path) -> None:
    folder = copy_model(digits_build, tmp_path, (KEY,)) / KEY
    assert cli("verify", str(folder))[0] == 0
    (folder / "golden" / "extra.npz").write_bytes(b"surprise")
    code, out = cli("verify", str(folder))
    line = one_error_line(out)
    assert code == 7 and "golden/extra.npz is not listed in manifest.json" in line
