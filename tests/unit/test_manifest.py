"""Manifests are typed at both ends: written from models, read back into them, schema generated."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from kiln.config import DimSpec, InputSpec, Tolerance
from kiln.errors import ConfigError
from kiln.manifest import (
    MANIFEST,
    Execution,
    FileEntry,
    Gate,
    Manifest,
    OutputFigures,
    ParityResult,
    manifest_schema,
)
from kiln.spec import Signature
from kiln.targets.base import Artifact

SCHEMA = Path(__file__).parents[2] / "kiln" / "schemas" / "manifest.schema.json"


def _manifest(**overrides: object) -> Manifest:
    sig = Signature((InputSpec(name="x", shape=["batch", 4]),), {"batch": DimSpec(min=1, max=8)}, ("y",))
    parity = ParityResult(
        passed=False,
        cases=3,
        tolerance=Tolerance(max_rel=1e-4),
        outputs={"y": OutputFigures(max_abs=float("inf"), max_rel=float("inf"), cosine=0.0)},
        breaches=["output 'y': max_rel inf > tolerance 0.0001"],
        worst="max_rel inf",
    )
    fields: dict[str, object] = {
        "kiln_version": "0.1.0",
        "created": "2026-12-01T00:00:00Z",
        "model": "m",
        "source": "m.py:build",
        "export_key": "e",
        "cache_key": "k",
        "target": "onnxruntime",
        "precision": "fp32",
        "options": {},
        "main_file": "model.onnx",
        "signature": sig,
        "toolchain": {"torch": "2.13.0"},
        "execution": Execution(execution_precision="fp32", providers=["CPUExecutionProvider"]),
        "gate": Gate(passed=False, parity=parity, breaches=list(parity.breaches)),
        "build_seconds": 0.5,
        "files": [FileEntry(path="model.onnx", sha256="0" * 64, bytes=10)],
        "size_bytes": 10,
    }
    return Manifest(**{**fields, **overrides})


def test_committed_schema_is_the_generated_one() -> None:
    assert json.loads(SCHEMA.read_text()) == manifest_schema(), "run: python -m kiln.manifest"


def test_manifest_round_trips_through_json_and_validates_against_its_schema(tmp_path: Path) -> None:
    _manifest().write(tmp_path)
    data = json.loads((tmp_path / MANIFEST).read_text())
    jsonschema.validate(data, manifest_schema())
    again = Manifest.read(tmp_path)
    assert again == _manifest()
    assert again.gate.parity is not None and again.gate.parity.outputs["y"].max_abs == float("inf")
    assert again.execution.get("providers") == ["CPUExecutionProvider"]  # a target's own fact, kept
    assert data["schema"] == "kiln.manifest/3" and data["signature"]["inputs"][0] == {
        "name": "x",
        "shape": ["batch", 4],
        "dtype": "float32",
    }


def test_an_artifact_comes_back_from_its_folder(tmp_path: Path) -> None:
    _manifest().write(tmp_path)
    artifact = Artifact.from_manifest(tmp_path)
    assert (artifact.target, artifact.main) == ("onnxruntime", tmp_path / "model.onnx")
    assert artifact.signature.outputs == ("y",) and artifact.info.execution_precision == "fp32"


def test_an_old_or_broken_manifest_is_one_line_saying_to_rebuild(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps({"schema": "kiln.manifest/1", "target": "eager"}))
    assert Manifest.find(tmp_path) is None
    with pytest.raises(ConfigError, match="run kiln build"):
        Manifest.read(tmp_path)
    with pytest.raises(ConfigError, match="missing"):
        Manifest.read(tmp_path / "nowhere")
    (tmp_path / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)  # was a RecursionError
    with pytest.raises(ConfigError, match="is missing or unreadable; run kiln build"):
        Manifest.read(tmp_path)
    fields = _manifest().to_json()
    (tmp_path / MANIFEST).write_text(json.dumps({**fields, "signature": {"inputs": None}}))  # was a TypeError
    with pytest.raises(ConfigError, match="from another kiln version"):
        Manifest.read(tmp_path)


def test_a_gate_that_did_not_run_is_neither_pass_nor_fail() -> None:
    gate = Gate.not_run("needs macOS")
    assert gate.passed is None and not gate.ran and gate.reason == "not run: needs macOS"
