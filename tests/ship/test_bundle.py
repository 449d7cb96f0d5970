"""``kiln package`` and ``kiln keygen`` on the real digits build: what a bundle holds, that
``sha256sum -c`` reads its sums, that packaging is byte for byte reproducible, what is refused,
and the golden set the build writes for it."""

from __future__ import annotations

import calendar
import json
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kiln.cli import main
from kiln.config import DimSpec, InputSpec, Tolerance
from kiln.errors import ConfigError, IntegrityError, ParityError, UnavailableError
from kiln.gate.golden import GOLDEN, MAX_BYTES, MAX_CASES, Candidate, GateSetup, GoldenSet, write_cases
from kiln.manifest import Gate, Manifest
from kiln.ship import CARD, SUMS
from kiln.ship.bundle import PackageOptions, package
from kiln.ship.select import artifact_folders
from kiln.spec import Arrays, Signature, parity_points
from kiln.store import file_entries
from kiln.targets.base import Runner
from tests.bench.synthetic import cell, synthetic_results


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("kiln: error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def copy_model(digits_build: Path, tmp_path: Path, keys: tuple[str, ...] = ("onnxruntime-fp32",)) -> Path:
    """A private copy of some of the build's artifacts (the session's build stays untouched)."""
    model = tmp_path / "build" / "digits"
    for key in keys:
        shutil.copytree(digits_build / key, model / key)
    return model


def rewrite_manifest(folder: Path, **updates: object) -> Manifest:
    """The manifest with ``updates`` and its file list recomputed from the folder."""
    manifest = Manifest.read(folder)
    files = [type(manifest.files[0])(**e) for e in file_entries(folder)]
    manifest = manifest.model_copy(update={"files": files, "size_bytes": sum(f.bytes for f in files), **updates})
    manifest.write(folder)
    return manifest


# Golden data, as kiln build writes it.


def test_build_writes_a_golden_set_covered_by_the_manifest(digits_build: Path) -> None:
    for folder in artifact_folders(digits_build):
        manifest = Manifest.read(folder)
        record = manifest.golden
        assert record is not None and record.screened and 1 <= record.cases <= MAX_CASES
        assert record.bytes <= MAX_BYTES and record.tolerance == manifest.gate.parity.tolerance
        listed = {f.path for f in manifest.files}
        assert {f"{GOLDEN}/index.json", f"{GOLDEN}/inputs.npz", f"{GOLDEN}/expected.npz"} <= listed
        # the artifact's size is what the runtime loads: reports and compare stay comparable
        assert manifest.size_bytes == sum(f.bytes for f in manifest.files if not f.path.startswith(GOLDEN))
        golden = GoldenSet.read(folder)
        assert len(golden.index.cases) == record.cases
        # One case has the batch at its max (a runtime that planned memory for the example fails there).
        assert any("batch" in c.at_max for c in golden.index.cases), folder.name
        for case in golden.index.cases:
            x = golden.arrays(golden.inputs, case.name)["x"]
            assert list(x.shape) == case.shapes["x"] and x.dtype == np.float32
            assert set(golden.arrays(golden.expected, case.name)) == set(manifest.signature.outputs)


def test_a_calibrated_precision_ships_real_inputs_only(digits_build: Path) -> None:
    int8 = Manifest.read(digits_build / "onnxruntime-int8")
    fp32 = Manifest.read(digits_build / "onnxruntime-fp32")
    assert int8.golden is not None and fp32.golden is not None
    # static int8 is gated on real data: seeded noise saturates its calibrated ranges
    assert "seeded" not in int8.golden.kinds and set(int8.golden.kinds) <= {"calibration", "evaluation"}
    assert "seeded" in fp32.golden.kinds and "calibration" in fp32.golden.kinds
    seeded = [c for c in GoldenSet.read(digits_build / "onnxruntime-fp32").index.cases if c.kind == "seeded"]
    assert len(seeded) == len(parity_points(fp32.signature))


class Doubtful(Runner):
    """An artifact in numpy: eager's function (the first two features), with the sign flipped on
    inputs whose first value is above 10 (the cases it gets wrong)."""

    def infer(self, inputs: Arrays) -> Arrays:
        x = inputs["x"]
        return {"y": x[:, :2] * (-1.0 if x[0, 0] > 10 else 1.0)}


SIG = Signature((InputSpec(name="x", shape=["batch", 3]),), {"batch": DimSpec(min=1, max=4)}, ("y",))


def _case(kind: str, batch: int, first: float = 0.0) -> Candidate:
    x = np.full((batch, 3), 0.5, np.float32)
    x[0, 0] = first
    return Candidate(kind, f"{kind} {batch}", {"x": x}, {"y": x[:, :2].copy()})


def test_golden_cases_are_screened_on_the_artifact_capped_and_max_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = GateSetup(Tolerance(min_cosine=0.999))
    wrong_at_max = [_case("seeded", 1), _case("seeded", 4, first=11.0), _case("calibration", 2)]
    record = write_cases(tmp_path / "a", SIG, wrong_at_max, gate, Doubtful(), Doubtful().infer)
    index = GoldenSet.read(tmp_path / "a").index
    assert record.screened and record.cases == 2 and [c.label for c in index.cases] == ["seeded 1", "calibration 2"]
    # Not run (no runner): every case, unscreened, the one at the batch max first.
    record = write_cases(tmp_path / "b", SIG, wrong_at_max, gate, None, Doubtful().infer)
    index = GoldenSet.read(tmp_path / "b").index
    assert not record.screened and index.cases[0].at_max == ["batch"] and record.cases == 3
    # At most MAX_CASES, the kinds in turn.
    many = [_case("seeded", 1) for _ in range(6)] + [_case("evaluation", 2) for _ in range(6)]
    write_cases(tmp_path / "c", SIG, many, gate, None, Doubtful().infer)
    index = GoldenSet.read(tmp_path / "c").index
    assert len(index.cases) == MAX_CASES
    assert [c.kind for c in index.cases[:4]] == ["seeded", "evaluation", "seeded", "evaluation"]
    # Real data only: real rows stacked to the batch max, with eager's outputs for them.
    real = [_case("calibration", 1), _case("calibration", 1, first=0.25)]
    record = write_cases(tmp_path / "d", SIG, real, gate, Doubtful(), Doubtful().infer)
    golden = GoldenSet.read(tmp_path / "d")
    stacked = golden.index.cases[0]
    assert stacked.at_max == ["batch"] and stacked.shapes["x"] == [4, 3] and "stacked" in stacked.label
    assert golden.arrays(golden.inputs, "case0")["x"][:, 0].tolist() == [0.0, 0.25, 0.0, 0.25]
    # Over the byte cap, still one case: the smallest.
    monkeypatch.setattr("kiln.gate.golden.MAX_BYTES", 1)
    record = write_cases(tmp_path / "e", SIG, wrong_at_max, gate, Doubtful(), Doubtful().infer)
    assert record.cases == 1 and GoldenSet.read(tmp_path / "e").index.cases[0].label == "seeded 1"


# Bundles.


def test_package_writes_one_bundle_per_artifact_with_its_files_sums_card_and_golden(
    digits_build: Path, tmp_path: Path
) -> None:
    code, out = cli("package", str(digits_build), "-o", str(tmp_path / "dist"))
    assert code == 0, out
    folders = artifact_folders(digits_build)
    names = sorted(p.name for p in (tmp_path / "dist").iterdir())
    assert names == sorted(f"digits-{f.name}.tar.gz" for f in folders)
    manifest = Manifest.read(digits_build / "onnxruntime-int8")
    with tarfile.open(tmp_path / "dist" / "digits-onnxruntime-int8.tar.gz") as tar:
        members = tar.getmembers()
        top = "digits-onnxruntime-int8"
        files = {m.name.removeprefix(top + "/") for m in members if m.isfile()}
        assert files == {f.path for f in manifest.files} | {"manifest.json", CARD, SUMS}
        assert [m.name for m in members] == sorted(m.name for m in members)
        created = calendar.timegm(time.strptime(manifest.created, "%Y-%m-%dT%H:%M:%SZ"))
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", created)
            assert m.mode == (0o755 if m.isdir() else 0o644)
        card = tar.extractfile(f"{top}/{CARD}").read().decode()
        sums = tar.extractfile(f"{top}/{SUMS}").read().decode()
    assert "`batch` 1..64" in card and "| `x` | float32 | [batch, 1, 8, 8] |" in card
    assert "**passed**" in card and "min_cosine 0.96" in card and "Task metric `top1`" in card
    assert f"| onnxruntime | {manifest.toolchain['onnxruntime']} |" in card
    assert "quantize_static" in card  # what the runtime executes
    assert "## Benchmark" not in card  # no results.json beside this build
    assert all(len(line.split("  ")[0]) == 64 for line in sums.splitlines())


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
def test_sha256sums_is_what_sha256sum_c_reads(digits_build: Path, tmp_path: Path) -> None:
    done = package(digits_build / "openvino-fp32", PackageOptions(out=tmp_path))
    with tarfile.open(done.bundle) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    run = subprocess.run(
        ["sha256sum", "-c", "--strict", SUMS],
        cwd=tmp_path / "x" / "digits-openvino-fp32",
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "model.xml: OK" in run.stdout and "golden/expected.npz: OK" in run.stdout


def test_packaging_twice_gives_byte_identical_bundles(
    digits_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = digits_build / "onnxruntime-fp32"
    first = package(folder, PackageOptions(out=tmp_path / "a")).bundle.read_bytes()
    second = package(folder, PackageOptions(out=tmp_path / "b")).bundle.read_bytes()
    assert first == second
    assert first[3] & 0x08 == 0 and first[4:8] == b"\0\0\0\0"  # gzip: no file name, mtime 0
    again = package(folder, PackageOptions(out=tmp_path / "a"))
    assert not again.changed  # nothing rewritten: make sees no new file
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    dated = [package(folder, PackageOptions(out=tmp_path / d)).bundle for d in ("c", "d")]
    assert dated[0].read_bytes() == dated[1].read_bytes() != first
    with tarfile.open(dated[0]) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH"):
        package(folder, PackageOptions(out=tmp_path / "e"))


def test_the_card_carries_the_latest_benchmark_of_this_artifact(digits_build: Path, tmp_path: Path) -> None:
    model = copy_model(digits_build, tmp_path)
    manifest = Manifest.read(model / "onnxruntime-fp32")
    results = synthetic_results(
        created="2099-01-01T00:00:00Z",
        model="digits",
        cells=[
            cell("eager-fp32", 1, 2.0, speedup_vs_eager=1.0),
            cell("onnxruntime-fp32", 1, 0.5, speedup_vs_eager=4.0),
        ],
    )
    (model / "results.json").write_text(json.dumps(results.to_json()))
    card = _card(package(model / "onnxruntime-fp32", PackageOptions(out=tmp_path / "dist")).bundle)
    assert "## Benchmark" in card and "test-cpu-2c-00000000" in card and "4.00x" in card and "| 0.500 |" in card
    stale = results.model_copy(update={"created": "2000-01-01T00:00:00Z"})
    (model / "results.json").write_text(json.dumps(stale.to_json()))
    card = _card(package(model / "onnxruntime-fp32", PackageOptions(out=tmp_path / "dist")).bundle)
    assert "measured before this build" in card and manifest.created in card


def _card(bundle: Path) -> str:
    with tarfile.open(bundle) as tar:
        return tar.extractfile(f"{bundle.name.removesuffix('.tar.gz')}/{CARD}").read().decode()


def test_a_failed_gate_is_not_packaged_exit_3(digits_build: Path, tmp_path: Path) -> None:
    model = copy_model(digits_build, tmp_path)
    breach = "output 'output': cosine 0.9 < tolerance 0.99999"
    rewrite_manifest(model / "onnxruntime-fp32", gate=Gate(passed=False, breaches=[breach]))
    with pytest.raises(ParityError, match=r"cosine 0\.9"):
        package(model / "onnxruntime-fp32", PackageOptions(out=tmp_path / "dist"))
    code, out = cli("package", str(model), "-o", str(tmp_path / "dist"))
    assert code == 3 and "failed its gate" in one_error_line(out)
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_an_unrun_gate_ships_only_with_allow_ungated_and_says_so(digits_build: Path, tmp_path: Path) -> None:
    model = copy_model(digits_build, tmp_path)
    rewrite_manifest(model / "onnxruntime-fp32", gate=Gate.not_run("needs macOS"))
    with pytest.raises(UnavailableError, match="--allow-ungated"):
        package(model / "onnxruntime-fp32", PackageOptions(out=tmp_path / "dist"))
    code, out = cli("package", str(model), "-o", str(tmp_path / "dist"), "--allow-ungated")
    assert code == 0, out
    card = _card(tmp_path / "dist" / "digits-onnxruntime-fp32.tar.gz")
    assert card.splitlines()[2].startswith("**NOT GATED**: not run: needs macOS")


def test_an_artifact_changed_since_its_build_is_refused_exit_7(digits_build: Path, tmp_path: Path) -> None:
    model = copy_model(digits_build, tmp_path)
    with (model / "onnxruntime-fp32" / "model.onnx").open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match=r"model\.onnx is missing or changed"):
        package(model / "onnxruntime-fp32", PackageOptions(out=tmp_path / "dist"))


def test_an_old_manifest_without_golden_data_asks_for_a_rebuild(digits_build: Path, tmp_path: Path) -> None:
    model = copy_model(digits_build, tmp_path)
    rewrite_manifest(model / "onnxruntime-fp32", golden=None, schema_id="kiln.manifest/2")
    with pytest.raises(ConfigError, match="run kiln build again"):
        package(model / "onnxruntime-fp32", PackageOptions(out=tmp_path / "dist"))


# Selecting artifacts.


def test_artifact_folders_filter_by_name_precision_or_folder(digits_build: Path, tmp_path: Path) -> None:
    every = artifact_folders(digits_build)
    assert every == sorted(every) and (digits_build / "export") not in every
    assert [p.name for p in artifact_folders(digits_build, ["onnxruntime"])] == ["onnxruntime-fp32", "onnxruntime-int8"]
    assert [p.name for p in artifact_folders(digits_build, ["onnxruntime:int8"])] == ["onnxruntime-int8"]
    assert [p.name for p in artifact_folders(digits_build, ["openvino-fp32"])] == ["openvino-fp32"]
    assert artifact_folders(digits_build / "eager-fp32") == [digits_build / "eager-fp32"]
    with pytest.raises(ConfigError, match=r"built: .*onnxruntime:int8"):
        artifact_folders(digits_build, ["tensorrt:fp16"])
    (tmp_path / "notes").mkdir()
    with pytest.raises(ConfigError, match="holds no built artifact"):
        artifact_folders(tmp_path)
    code, out = cli("package", str(tmp_path / "nowhere"))
    assert code == 2 and "is not a folder" in one_error_line(out)


# Keys and signatures.


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path) -> None:
    code, out = cli("keygen", "-o", str(tmp_path))
    assert code == 0, out
    private, public = tmp_path / "kiln-signing.pem", tmp_path / "kiln-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = private.read_bytes()
    code, out = cli("keygen", "-o", str(tmp_path))
    assert code == 2 and "--force" in one_error_line(out) and private.read_bytes() == before
    code, out = cli("keygen", "-o", str(tmp_path / "release"))
    assert code == 0 and (tmp_path / "release.pem").is_file() and (tmp_path / "release.pub").is_file()


def test_sign_writes_a_deterministic_signature_openssl_verifies(digits_build: Path, tmp_path: Path) -> None:
    cli("keygen", "-o", str(tmp_path / "k"))
    key = tmp_path / "k.pem"
    code, out = cli("package", str(digits_build), "-t", "onnxruntime:fp32", "-o", str(tmp_path), "--sign", str(key))
    assert code == 0 and "signed" in out, out
    bundle = tmp_path / "digits-onnxruntime-fp32.tar.gz"
    sig = bundle.with_name(bundle.name + ".sig")
    first = sig.read_bytes()
    assert len(first) == 64  # raw Ed25519
    package(digits_build / "onnxruntime-fp32", PackageOptions(out=tmp_path, sign=key))
    assert sig.read_bytes() == first
    if shutil.which("openssl") is not None:
        import hashlib

        (tmp_path / "digest.bin").write_bytes(hashlib.sha256(bundle.read_bytes()).digest())
        run = subprocess.run(
            [
                *("openssl", "pkeyutl", "-verify", "-pubin", "-rawin", "-inkey", str(tmp_path / "k.pub")),
                *("-in", str(tmp_path / "digest.bin"), "-sigfile", str(sig)),
            ],
            capture_output=True,
            text=True,
        )
        if "rawin" not in run.stderr:  # OpenSSL before 3.0 has no -rawin
            assert run.returncode == 0 and "Verified" in run.stdout, run.stdout + run.stderr
    (tmp_path / "bad.pem").write_text("not a key")
    code, out = cli(
        "package", str(digits_build), "-t", "eager", "-o", str(tmp_path), "--sign", str(tmp_path / "bad.pem")
    )
    assert code == 2 and "not a PEM private key" in one_error_line(out)


def test_packaging_without_a_key_drops_a_stale_signature(digits_build: Path, tmp_path: Path) -> None:
    model = copy_model(digits_build, tmp_path)
    cli("keygen", "-o", str(tmp_path / "k"))
    signed = package(model / "onnxruntime-fp32", PackageOptions(out=tmp_path / "dist", sign=tmp_path / "k.pem"))
    assert signed.signature is not None and signed.signature.is_file()
    # The card changes (a benchmark appears): the bytes change, and the old signature would lie.
    (model / "results.json").write_text(json.dumps(synthetic_results(created="2099-01-01T00:00:00Z").to_json()))
    changed = package(model / "onnxruntime-fp32", PackageOptions(out=tmp_path / "dist"))
    assert changed.changed and not signed.signature.exists()
