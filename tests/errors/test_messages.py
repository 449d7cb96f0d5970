"""The lines a user needs where kiln said too little or too much (issue 39, part 6): a capture
failure names the model's own file and line (torch's graph dump only with ``--verbose``); a shape
that does not fit names both shapes (the source's example, the spec against the model, an
artifact's output against eager's); ``kiln generate`` flushes an incomplete last character as
U+FFFD, refuses ``--top-k`` without ``--temperature``, and given a build folder lists its artifacts.
"""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from kiln.cli import main
from kiln.config import DimSpec, InputSpec, Tolerance
from kiln.errors import ConfigError, ExportError
from kiln.spec import Signature

MODEL = textwrap.dedent(
    """
    import torch


    class DataDependent(torch.nn.Module):
        def forward(self, x):
            y = x * 2
            if y.sum() > 0:
                return y
            return x - 1


    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x)
    """
)


def _line(code: str) -> int:
    """The line of MODEL that holds ``code``, as a traceback numbers it."""
    return next(i for i, text in enumerate(MODEL.splitlines(), 1) if text.strip() == code)


SIG = Signature((InputSpec(name="x", shape=["batch", 4]),), {"batch": DimSpec(min=1, max=4)})


def _models(tmp_path: Path) -> tuple[Path, Any]:
    path = tmp_path / "my_model.py"
    path.write_text(MODEL)
    spec = importlib.util.spec_from_file_location("my_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


# ---- capture ----


@pytest.mark.parametrize("strict", [False, True])
def test_a_capture_failure_names_the_models_file_and_line_and_hides_the_graph_dump(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, strict: bool
) -> None:
    import torch

    from kiln.capture.exporters.torch_export import capture

    path, models = _models(tmp_path)
    monkeypatch.delenv("KILN_VERBOSE", raising=False)
    with pytest.raises(ExportError) as caught:
        capture(models.DataDependent(), (torch.randn(2, 4),), SIG, strict)
    line = str(caught.value)
    assert f"torch.export failed at {path}:{_line('if y.sum() > 0:')} (`if y.sum() > 0:`): " in line, line
    assert "\n" not in line and "--verbose" in line
    assert "def forward" not in capsys.readouterr().err  # torch printed its partial graph twice
    monkeypatch.setenv("KILN_VERBOSE", "1")
    with pytest.raises(ExportError):
        capture(models.DataDependent(), (torch.randn(2, 4),), SIG, strict)
    assert "def forward" in capsys.readouterr().err


def test_a_spec_the_model_cannot_take_names_the_shapes_and_the_models_line(tmp_path: Path) -> None:
    import torch

    from kiln.capture.exporters import first_forward

    path, models = _models(tmp_path)
    wide = Signature((InputSpec(name="x", shape=["batch", 5]),), SIG.dims)
    with pytest.raises(ConfigError) as caught:  # was a RuntimeError traceback, exit 1
        first_forward(models.Linear(), (torch.randn(2, 5),), wide)
    line = str(caught.value)
    assert f"the model failed at {path}:{_line('return self.lin(x)')} (`return self.lin(x)`)" in line, line
    assert "on inputs of [model].inputs' shapes (x [2, 5] float32)" in line
    assert "mat1 and mat2 shapes cannot be multiplied (2x5 and 4x3)" in line


def test_an_example_outside_the_spec_names_both_shapes() -> None:
    import torch

    from kiln.capture.exporters import check_example

    narrow = Signature(SIG.inputs, {"batch": DimSpec(min=3, max=4)})
    check_example(narrow, (torch.randn(3, 4),))
    with pytest.raises(ConfigError) as caught:  # was "ConstraintViolationError: 2 not in range [3, 4]"
        check_example(narrow, (torch.randn(2, 4),))
    assert "example input 'x' has shape [2, 4], and [model].inputs says ['batch[3..4]', 4]" in str(caught.value)


# ---- the gate ----


def test_an_output_of_another_shape_is_one_breach_with_both_shapes() -> None:
    from kiln.parity import ParityReport

    report = ParityReport(Tolerance(max_rel=1e-4, min_cosine=0.99))
    report.add_case({"y": np.ones((1, 10))}, {"y": np.ones((2, 10)), "z": np.ones(3)})
    assert report.breaches() == [
        "output 'y': the artifact returned shape [1, 10] where eager returns [2, 10]: it does not follow the "
        "input's dims; check [model].dims, or try another target or precision",
        "output 'z': the artifact does not return it (it returns ['y']); rebuild it, or try another target",
    ]  # each was "max_rel inf ... no tolerance passes" and "min_cosine = 0 would pass"


# ---- kiln generate ----


class _Bytes:
    """A byte-level tokenizer: each id is one byte; decode replaces an incomplete UTF-8 sequence."""

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_an_incomplete_last_character_is_flushed_as_the_replacement_character() -> None:
    from kiln.decoding import stream_text

    tokens = [*"hé€".encode(), 0xE2]  # ends on a lone lead byte
    pieces = list(stream_text(_Bytes(), iter(tokens)))  # type: ignore[arg-type]
    assert "".join(pieces) == "hé€\ufffd"
    assert pieces[:3] == ["h", "é", "€"]  # a character split across tokens still waits for its rest
    assert list(stream_text(_Bytes(), iter([]))) == []  # type: ignore[arg-type]


def test_top_k_without_a_temperature_is_refused_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["generate", str(tmp_path), "--prompt", "hi", "--top-k", "5"])
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("kiln: error: top-k 5 samples among the likeliest tokens") and "--temperature" in line


def _built(folder: Path, *keys: str) -> None:
    for key in keys:
        (folder / key).mkdir(parents=True)
        (folder / key / "manifest.json").write_text("{}")


def test_generate_given_a_build_folder_lists_the_artifacts_in_it(tmp_path: Path) -> None:
    _built(tmp_path / "build" / "tinyllm", "onnxruntime-int4", "openvino-int8")
    for folder, listed in (
        (tmp_path / "build" / "tinyllm", "onnxruntime-int4, openvino-int8"),
        (tmp_path / "build", "tinyllm/onnxruntime-int4, tinyllm/openvino-int8"),
    ):
        result = CliRunner().invoke(main, ["generate", str(folder), "--prompt", "hi"])
        assert result.exit_code == 2, result.output
        assert (
            f"decode from one of them, e.g. {folder}/" in result.output and f"(choose from: {listed})" in result.output
        )
