"""``kiln verify`` on real digits bundles: a good bundle verifies and replays its golden set; every
kind of tampering (a changed byte, an extra file, a path-traversal member, links and devices that
leave the bundle, a bad or missing signature) is refused with its exit code, naming what it found;
a bundle whose golden outputs were altered (with correct checksums) exits 3; compatibility with
this machine's runtime and hardware follows each format's rule. The evil tarballs are built here
with tarfile."""

from __future__ import annotations

import hashlib
import io
import json
import platform
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import CompatibilityError, IntegrityError, UnsafeBundleError
from kiln.gate.golden import EXPECTED, GOLDEN
from kiln.manifest import Manifest
from kiln.ship import SUMS
from kiln.ship.bundle import PackageOptions, package
from kiln.ship.compat import accepts, check_runs_here, same_gpu
from kiln.ship.select import artifact_folders
from kiln.ship.verify import extract_verified, verify
from kiln.targets import CAPABILITIES, REGISTRY, availability
from kiln.targets.shipping import DEFAULT_RULE
from tests.ship.test_bundle import cli, copy_model, one_error_line, rewrite_manifest

Entries = list[tuple[tarfile.TarInfo, bytes | None]]


@pytest.fixture(scope="module")
def bundles(digits_build: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One bundle per digits artifact, by artifact key."""
    out = tmp_path_factory.mktemp("dist")
    return {f.name: package(f, PackageOptions(out=out)).bundle for f in artifact_folders(digits_build)}


def entries(bundle: Path) -> Entries:
    with tarfile.open(bundle) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]


def write_tar(path: Path, items: Entries) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in items:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    info.size = len(data) if data is not None else 0
    return info, data


def replaced(items: Entries, name: str, data: bytes, fix_sums: bool = True) -> Entries:
    """``items`` with one file's bytes replaced (and its line in SHA256SUMS fixed, if asked)."""
    out: Entries = []
    for info, old in items:
        if info.name.endswith("/" + name):
            info = tarfile.TarInfo(info.name)
            info.size, info.mode = len(data), 0o644
            old = data
        out.append((info, old))
    if fix_sums:
        sums_at = next(i for i, (info, _) in enumerate(out) if info.name.endswith("/" + SUMS))
        info, sums = out[sums_at]
        digest = hashlib.sha256(data).hexdigest()
        lines = [f"{digest}  {name}" if line.endswith("  " + name) else line for line in sums.decode().splitlines()]
        text = ("\n".join(lines) + "\n").encode()
        fixed = tarfile.TarInfo(info.name)
        fixed.size, fixed.mode = len(text), 0o644
        out[sums_at] = (fixed, text)
    return out


def top(bundle: Path) -> str:
    return bundle.name.removesuffix(".tar.gz")


# A good bundle.


def test_verify_run_passes_on_a_good_bundle_of_every_digits_artifact(bundles: dict[str, Path], tmp_path: Path) -> None:
    for key, bundle in bundles.items():
        if not availability(key.split("-")[0]).run:
            continue
        done = verify(bundle, tmp_path / key, run=True)
        assert done.breaches == [], (key, done.breaches)
        assert (done.folder / "manifest.json").is_file() and done.folder.name == top(bundle)
        assert any(c.startswith("golden:") for c in done.checks) and any(c.startswith("runtime:") for c in done.checks)


def test_the_cli_verifies_and_keeps_the_artifact_with_extract(bundles: dict[str, Path], tmp_path: Path) -> None:
    code, out = cli("verify", str(bundles["onnxruntime-int8"]), "--run", "--extract", str(tmp_path))
    assert code == 0, out
    assert "ok: golden: 8 cases" in out or "ok: golden:" in out
    assert (tmp_path / "digits-onnxruntime-int8" / "model.onnx").is_file()
    assert extract_verified(bundles["eager-fp32"], tmp_path) == tmp_path / "digits-eager-fp32"


def test_an_artifact_folder_verifies_too(digits_build: Path) -> None:
    code, out = cli("verify", str(digits_build / "onnxruntime-fp32"), "--run")
    assert code == 0 and "ok: golden:" in out, out
    code, out = cli("verify", str(digits_build / "onnxruntime-fp32"), "--pubkey", str(digits_build))
    assert code == 2 and "a signature covers a bundle" in one_error_line(out)


# Golden numerics.


def test_altered_golden_outputs_with_correct_checksums_exit_3_one_line_per_breach(
    digits_build: Path, tmp_path: Path
) -> None:
    model = copy_model(digits_build, tmp_path, ("onnxruntime-int8",))
    folder = model / "onnxruntime-int8"
    with np.load(folder / GOLDEN / EXPECTED) as stored:
        expected = {k: stored[k] for k in stored.files}
    expected["case1/output"] = -expected["case1/output"]  # flips every class ranking
    np.savez(folder / GOLDEN / EXPECTED, **expected)
    rewrite_manifest(folder)  # the manifest (and so SHA256SUMS) vouch for the altered file
    bundle = package(folder, PackageOptions(out=tmp_path / "dist")).bundle
    assert verify(bundle, tmp_path / "ok").breaches == []  # intact: only the numerics are wrong
    code, out = cli("verify", str(bundle), "--run")
    assert code == 3, out
    gate = [line for line in out.splitlines() if line.startswith("kiln: gate:")]
    assert gate and all("golden case1" in line for line in gate), out
    assert any("cosine" in line for line in gate) and any("top1" in line for line in gate)
    assert "Traceback" not in out and "verified" not in out


# Tampering.


def test_a_changed_byte_is_refused_exit_7(bundles: dict[str, Path], tmp_path: Path) -> None:
    items = entries(bundles["onnxruntime-fp32"])
    model = next(data for info, data in items if info.name.endswith("/model.onnx"))
    evil = write_tar(tmp_path / "b.tar.gz", replaced(items, "model.onnx", model[:-1] + b"\0", fix_sums=False))
    code, out = cli("verify", str(evil), "--extract", str(tmp_path / "x"))
    assert code == 7 and "model.onnx does not match its checksum" in one_error_line(out)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())  # nothing half-verified kept


def test_a_file_not_in_sha256sums_is_refused_exit_7(bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = bundles["onnxruntime-fp32"]
    items = [*entries(bundle), member(f"{top(bundle)}/golden/extra.npz", b"surprise")]
    code, out = cli("verify", str(write_tar(tmp_path / "b.tar.gz", items)))
    assert code == 7 and "golden/extra.npz is not listed in SHA256SUMS" in one_error_line(out)


def test_a_manifest_that_disagrees_with_the_sums_is_refused_exit_7(bundles: dict[str, Path], tmp_path: Path) -> None:
    items = entries(bundles["onnxruntime-fp32"])
    model = next(data for info, data in items if info.name.endswith("/model.onnx"))
    evil = write_tar(tmp_path / "b.tar.gz", replaced(items, "model.onnx", model + b"\0"))  # sums fixed, manifest not
    code, out = cli("verify", str(evil))
    assert code == 7 and "differs from what manifest.json records" in one_error_line(out)


@pytest.mark.parametrize(
    ("name", "kind", "link", "what"),
    [
        ("{top}/../evil.txt", tarfile.REGTYPE, "", "climbs out with '..'"),
        ("/tmp/evil.txt", tarfile.REGTYPE, "", "absolute path"),
        ("{top}/link", tarfile.SYMTYPE, "../../../etc/passwd", "outside the bundle"),
        ("{top}/abs-link", tarfile.SYMTYPE, "/etc/passwd", "outside the bundle"),
        ("{top}/hard", tarfile.LNKTYPE, "etc/passwd", "outside the bundle"),
        ("{top}/dev", tarfile.CHRTYPE, "", "device or fifo"),
        ("{top}/pipe", tarfile.FIFOTYPE, "", "device or fifo"),
    ],
)
def test_an_unsafe_member_is_refused_exit_7_naming_it(
    bundles: dict[str, Path], tmp_path: Path, name: str, kind: bytes, link: str, what: str
) -> None:
    bundle = bundles["onnxruntime-fp32"]
    name = name.format(top=top(bundle))
    data = b"x" if kind == tarfile.REGTYPE else None
    evil = write_tar(tmp_path / "b.tar.gz", [*entries(bundle), member(name, data, kind, link)])
    with pytest.raises(UnsafeBundleError, match=what):
        extract_verified(evil, tmp_path / "x")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "x").exists()
    code, out = cli("verify", str(evil))
    line = one_error_line(out)
    assert code == 7 and repr(name) in line and what in line


def test_a_link_inside_the_bundle_is_not_a_kiln_bundle_exit_7(bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = bundles["onnxruntime-fp32"]
    evil = [*entries(bundle), member(f"{top(bundle)}/alias.onnx", None, tarfile.SYMTYPE, "model.onnx")]
    with pytest.raises(IntegrityError, match="is a link"):
        extract_verified(write_tar(tmp_path / "b.tar.gz", evil), tmp_path / "x")


def test_not_a_tarball_is_exit_7(tmp_path: Path) -> None:
    (tmp_path / "b.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    code, out = cli("verify", str(tmp_path / "b.tar.gz"))
    assert code == 7 and "not a readable gzipped tar" in one_error_line(out)


# Signatures.


def test_signatures_good_bad_missing_and_tampered(digits_build: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert cli("keygen", "-o", str(tmp_path / name))[0] == 0
    out = tmp_path / "dist"
    bundle = package(digits_build / "onnxruntime-fp32", PackageOptions(out=out, sign=tmp_path / "a.pem")).bundle
    code, text = cli("verify", str(bundle), "--pubkey", str(tmp_path / "a.pub"))
    assert code == 0 and "ok: signature: Ed25519" in text, text
    code, text = cli("verify", str(bundle), "--pubkey", str(tmp_path / "b.pub"))
    assert code == 7 and "does not verify" in one_error_line(text)
    copy = shutil.copy(bundle, tmp_path / bundle.name)  # the bundle without its .sig
    code, text = cli("verify", str(copy), "--pubkey", str(tmp_path / "a.pub"))
    assert code == 7 and ".sig is missing" in one_error_line(text)
    items = entries(bundle)
    card = next(data for info, data in items if info.name.endswith("/MODEL_CARD.md"))
    write_tar(bundle, replaced(items, "MODEL_CARD.md", card + b"\nTrust me.\n"))  # sums fixed, .sig kept
    assert cli("verify", str(bundle))[0] == 0  # intact as far as checksums go
    code, text = cli("verify", str(bundle), "--pubkey", str(tmp_path / "a.pub"))
    assert code == 7 and "changed after signing" in one_error_line(text)
    code, text = cli("verify", str(copy), "--pubkey", str(tmp_path / "a.pem"))
    assert code == 2 and "not a PEM public key" in one_error_line(text)


# Compatibility with this machine.


def test_every_registered_target_has_a_runtime_rule() -> None:
    rules = {name: spec.runtime for name, spec in REGISTRY.items()}
    assert all(rule is not DEFAULT_RULE for rule in rules.values()), rules
    assert rules["tensorrt"].gpu_bound and rules["tensorrt"].policy == "exact"
    assert rules["aoti"].policy == "exact" and rules["executorch"].policy == "same-minor"
    assert DEFAULT_RULE.policy == "newer-same-major"


@pytest.mark.parametrize(
    ("policy", "built", "here", "ok"),
    [
        ("exact", "10.7.0", "10.7.0", True),
        ("exact", "10.7.0", "10.8.0", False),
        ("exact", "2.13.0+cpu", "2.13.0", True),
        ("newer-same-major", "1.31.1", "1.32.0", True),
        ("newer-same-major", "1.31.1", "1.20.0", False),
        ("newer-same-major", "1.31.1", "2.0.0", False),
        ("newer-same-major", "2026.4.1", "2026.4.1", True),
        ("same-minor", "1.5.1", "1.5.3", True),
        ("same-minor", "1.5.1", "1.6.0", False),
    ],
)
def test_version_rules(policy: str, built: str, here: str, ok: bool) -> None:
    assert accepts(policy, built, here) is ok  # type: ignore[arg-type]


def test_an_artifact_built_with_a_newer_runtime_says_what_to_install_exit_5(digits_build: Path, tmp_path: Path) -> None:
    model = copy_model(digits_build, tmp_path)
    manifest = Manifest.read(model / "onnxruntime-fp32")
    rewrite_manifest(model / "onnxruntime-fp32", toolchain={**manifest.toolchain, "onnxruntime": "2.0.0"})
    bundle = package(model / "onnxruntime-fp32", PackageOptions(out=tmp_path / "dist")).bundle
    code, out = cli("verify", str(bundle))
    assert code == 5 and "install 'onnxruntime>=2.0.0,<3'" in one_error_line(out)


def test_a_manifest_of_another_schema_is_exit_5(bundles: dict[str, Path], tmp_path: Path) -> None:
    items = entries(bundles["onnxruntime-fp32"])
    data = json.loads(next(d for info, d in items if info.name.endswith("/manifest.json")))
    data["schema"] = "kiln.manifest/99"
    evil = write_tar(tmp_path / "b.tar.gz", replaced(items, "manifest.json", json.dumps(data).encode()))
    code, out = cli("verify", str(evil))
    assert code == 5 and "'kiln.manifest/99'" in one_error_line(out)


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the refusal where macOS is absent")
def test_a_core_ml_artifact_says_where_to_run_it(digits_build: Path) -> None:
    manifest = Manifest.read(digits_build / "onnxruntime-fp32").model_copy(update={"target": "coreml"})
    with pytest.raises(CompatibilityError, match=r"needs macOS .* run kiln verify there"):
        check_runs_here(manifest)


def test_a_tensorrt_engine_needs_the_gpu_model_it_was_built_on(digits_build: Path) -> None:
    manifest = Manifest.read(digits_build / "onnxruntime-fp32")
    execution = manifest.execution.model_copy()
    execution.update({"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt_version": "10.7.0"})
    engine = manifest.model_copy(update={"target": "tensorrt", "execution": execution})
    assert same_gpu(engine, [("NVIDIA H200", "9.0")]) == "gpu: NVIDIA H200 (9.0)"
    with pytest.raises(CompatibilityError, match=r"built for NVIDIA H200 .* has NVIDIA A10G"):
        same_gpu(engine, [("NVIDIA A10G", "8.6")])
    with pytest.raises(CompatibilityError, match="no GPU"):
        same_gpu(engine, [])
    if not CAPABILITIES["cuda"][0]():
        with pytest.raises(CompatibilityError, match="NVIDIA GPU"):
            check_runs_here(engine)


# A causal LM: prompts, greedy tokens and teacher-forced logits.


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama built for ONNX Runtime fp32 (cheap dims and few tokens), packaged."""
    from kiln.config import parse_config
    from kiln.pipeline.build import build
    from tests.generative.models import tiny_llama_folder

    if not availability("onnxruntime").run:
        pytest.skip(f"onnxruntime: {availability('onnxruntime').reason}")
    folder = tmp_path_factory.mktemp("lm")
    tiny_llama_folder(folder / "llama")
    data = {
        "model": {
            "name": "lm",
            "source": "hf:llama",
            "dims": {"sequence": {"min": 1, "max": 8}, "past": {"min": 0, "max": 31}},
        },
        "generation": {"new_tokens": 6, "heldout_tokens": 32},
        "target": [{"name": "onnxruntime"}],
    }
    (result,) = build(parse_config(data, folder), folder / "build")
    assert result.manifest is not None and result.manifest.gate.passed, result.error
    return package(folder / "build" / "lm" / "onnxruntime-fp32", PackageOptions(out=folder / "dist")).bundle


@pytest.mark.slow  # builds and packages a causal LM
def test_a_causal_lm_golden_set_round_trips_and_catches_changed_logits(lm_bundle: Path, tmp_path: Path) -> None:
    done = verify(lm_bundle, tmp_path / "ok", run=True)
    golden = done.manifest.golden
    assert golden is not None and golden.kinds == ["prompts"] and golden.screened
    assert done.breaches == [] and golden.tolerance.exact_tokens
    items = entries(lm_bundle)
    with np.load(io.BytesIO(next(d for i, d in items if i.name.endswith("/" + EXPECTED)))) as stored:
        expected = {k: stored[k] for k in stored.files}
    expected["case0/logits"] = expected["case0/logits"][:, ::-1].copy()  # same shape, other ranking
    expected["case1/tokens"] = expected["case1/tokens"][::-1].copy()
    buffer = io.BytesIO()
    np.savez(buffer, **expected)
    folder = copy_model(done.folder.parent, tmp_path, (done.folder.name,)) / done.folder.name
    (folder / GOLDEN / EXPECTED).write_bytes(buffer.getvalue())
    for extra in (SUMS, "MODEL_CARD.md"):
        (folder / extra).unlink()
    rewrite_manifest(folder)
    bundle = package(folder, PackageOptions(out=tmp_path / "dist")).bundle
    breaches = verify(bundle, tmp_path / "bad", run=True).breaches
    assert any(b.startswith("golden case0") and "cosine" in b for b in breaches), breaches
    assert any(b.startswith("golden case1") and "greedy tokens differ" in b for b in breaches), breaches


def test_an_executorch_program_needs_the_same_minor_release_and_its_delegate(digits_build: Path) -> None:
    if not availability("executorch").build:
        pytest.skip(f"executorch: {availability('executorch').reason}")
    from kiln.versions import versions

    here = versions(("executorch",))["executorch"]
    major, minor = here.split(".")[:2]
    base = Manifest.read(digits_build / "eager-fp32")
    pte = base.model_copy(update={"target": "executorch", "toolchain": {**base.toolchain, "executorch": here}})
    assert any(f"executorch {here}" in line for line in check_runs_here(pte))
    other = pte.model_copy(update={"toolchain": {**pte.toolchain, "executorch": f"{major}.{int(minor) + 1}.0"}})
    with pytest.raises(CompatibilityError, match=rf"install executorch=={major}\.{int(minor) + 1}\.\*"):
        check_runs_here(other)
    if platform.system() != "Darwin":
        coreml = pte.model_copy(update={"options": {"delegate": "coreml"}})
        with pytest.raises(CompatibilityError, match=r"needs macOS or iOS .* run kiln verify there"):
            check_runs_here(coreml)
