"""kiln build's accuracy-controlled search (kiln.pipeline.build._search, kiln.pipeline.search): which
fallback settings are tried, in what order, what is kept, and what the manifest records. The
builds themselves are stood in for here; tests/generative/test_openvino.py runs the real thing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kiln.config import TargetConfig, Tolerance
from kiln.manifest import Gate, SearchRecord
from kiln.pipeline import build as pipeline
from kiln.pipeline.planning import TargetPlan
from kiln.pipeline.progress import Stages
from kiln.pipeline.search import fallbacks, search_note, with_options
from kiln.targets import target_options
from kiln.targets.base import ModelFacts
from kiln.targets.onnxruntime.options import INT4_FALLBACKS as ORT_INT4_FALLBACKS
from kiln.targets.openvino.options import INT4_FALLBACKS, INT4_FALLBACKS_DATA_FREE


def _plan(precision: str = "int4", name: str = "openvino", **options: Any) -> TargetPlan:
    target = TargetConfig(name=name, precision=precision, options=options)
    return TargetPlan(target, None, None, target_options(target), Tolerance(), "key", "export", None)  # type: ignore[arg-type]


def _bundle(generative: bool = True, tokenizer: bool = True, kind: str = "hf") -> Any:
    return SimpleNamespace(
        signature=SimpleNamespace(generative=generative), tokenizer_dir=Path() if tokenizer else None, kind=kind
    )


def test_the_ladder_is_the_targets_and_skips_what_the_user_pinned() -> None:
    assert fallbacks(_plan(), _bundle(), calibration=False) == [dict(s) for s in INT4_FALLBACKS]
    # No tokenizer and no [calibration]: nothing for AWQ to read, so the data-free ladder.
    assert fallbacks(_plan(), _bundle(tokenizer=False), calibration=False) == [
        dict(s) for s in INT4_FALLBACKS_DATA_FREE
    ]
    assert fallbacks(_plan(), _bundle(tokenizer=False), calibration=True) == [dict(s) for s in INT4_FALLBACKS]
    # A group size the user gave is never changed: only the settings that leave it alone remain.
    assert fallbacks(_plan(group_size=64), _bundle(), calibration=False) == [{"awq": True, "scale_estimation": True}]
    assert fallbacks(_plan(fallback=False), _bundle(), calibration=False) == []
    assert fallbacks(_plan(), _bundle(generative=False), calibration=False) == []
    assert fallbacks(_plan("int8-weights"), _bundle(), calibration=False) == []


def test_a_gguf_source_tries_its_own_blocks_in_fp32_before_the_quantizer() -> None:
    ort = [dict(s) for s in ORT_INT4_FALLBACKS]
    assert fallbacks(_plan(name="onnxruntime"), _bundle(), calibration=False) == ort
    assert fallbacks(_plan(name="onnxruntime"), _bundle(kind="gguf"), calibration=False) == [
        {"accuracy_level": 1},
        *ort,
    ]
    assert fallbacks(_plan(name="onnxruntime", blocks="source"), _bundle(kind="gguf"), calibration=False) == [
        {"accuracy_level": 1}
    ]
    assert fallbacks(_plan(name="onnxruntime", blocks="quantizer"), _bundle(kind="gguf"), calibration=False) == ort


def test_each_setting_is_validated_like_the_config() -> None:
    tp = with_options(_plan(subset_size=8), {"awq": True, "group_size": 32})
    assert (tp.options.awq, tp.options.group_size, tp.options.subset_size) == (True, 32, 8)
    assert tp.target.options == {"subset_size": 8}  # the manifest keeps the options as given
    with pytest.raises(Exception, match="group_size"):
        with_options(_plan(), {"group_size": 0})
    assert ModelFacts(generative=True, data=False).data is False


def _gate(passed: bool, breach: str = "") -> Gate:
    return Gate(passed=passed, breaches=[breach] if breach else [])


@pytest.mark.parametrize(
    ("verdicts", "chosen"),
    [((False, True, True), 1), ((False, False, False, False), None), ((False, False, True), 2)],
)
def test_the_first_setting_that_passes_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verdicts: tuple[bool, ...], chosen: int | None
) -> None:
    settings = [{"awq": True, "scale_estimation": True}, {"group_size": 32}, {"ratio": 0.8}]
    seen: list[tuple[Any, list[str]]] = []
    named: list[str] = []

    def attempt(p: Any, tp: TargetPlan, site: Any, stages: Any, name: str = "") -> Any:
        named.append(name)
        tmp = site.tmp
        leftovers = sorted(f.name for f in tmp.iterdir())
        (tmp / f"model-{len(seen)}.bin").write_bytes(b"x" * (100 - 10 * len(seen)))
        (tmp / "golden").mkdir(exist_ok=True)
        (tmp / "golden" / "cases.npz").write_bytes(b"y" * 1000)  # never counted as the artifact's size
        seen.append((tp.options, leftovers))
        gate = _gate(verdicts[len(seen)], "" if verdicts[len(seen)] else f"breach {len(seen)}")
        return SimpleNamespace(gate=gate, seconds=1.0, artifact=SimpleNamespace(info=SimpleNamespace(notes=[])))

    monkeypatch.setattr(pipeline, "_attempt", attempt)
    (tmp_path / "model-first.bin").write_bytes(b"x" * 120)
    first = SimpleNamespace(gate=_gate(False, "top-1 0.65 < 0.9"), seconds=2.0)
    messages: list[str] = []
    built, record = pipeline._search(
        None,  # type: ignore[arg-type]
        _plan(),
        pipeline._Site(None, None, None, tmp_path),  # type: ignore[arg-type]
        first,  # type: ignore[arg-type]
        settings,
        Stages("m: openvino-int4", messages.append),
    )
    assert isinstance(record, SearchRecord)
    tried = len(record.tried) - 1
    assert tried == (chosen if chosen is not None else len(settings))  # stops at the first that passes
    assert record.chosen == chosen
    assert [s.settings for s in record.tried] == [{}, *settings[:tried]]
    assert [s.passed for s in record.tried] == [False, *verdicts[1 : tried + 1]]
    # Each attempt starts from an empty folder; sizes leave the golden set out.
    assert all(leftovers == [] for _, leftovers in seen)
    assert [s.size_bytes for s in record.tried] == [120, *(100 - 10 * i for i in range(tried))]
    assert seen[0][0].awq and not seen[0][0].ratio < 1
    assert "top-1 0.65 < 0.9" in record.reason and len(messages) == tried
    assert named == [f"attempt {i}: " for i in range(2, tried + 2)]  # the first build was attempt 1
    note = built.artifact.info.notes[-1]
    assert note == search_note(record)
    assert ("none of the" in note) == (chosen is None)


def test_onnxruntime_tries_smaller_8_bit_blocks_for_a_causal_lm_only_when_weight_only() -> None:
    from kiln.targets.onnxruntime.options import INT4_FALLBACKS as ORT_INT4
    from kiln.targets.onnxruntime.options import INT8_FALLBACKS as ORT_INT8

    def ort(precision: str, **options: Any) -> Any:
        return target_options(TargetConfig(name="onnxruntime", precision=precision, options=options))

    lm = ModelFacts(generative=True, data=True)
    assert ort("int8-dynamic").fallbacks("int8-dynamic", lm) == ORT_INT8
    assert ort("int8-dynamic", activations="dynamic").fallbacks("int8-dynamic", lm) == ()
    assert ort("int8-dynamic").fallbacks("int8-dynamic", ModelFacts(generative=False, data=True)) == ()
    assert ort("int4").fallbacks("int4", lm) == ORT_INT4
    assert ort("int4", fallback=False).fallbacks("int4", lm) == ()
    assert ort("int8").fallbacks("int8", lm) == ()
