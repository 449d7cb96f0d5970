"""Ensembles: members wrapped into one graph, captured once, built by every target as one
artifact and gated against the eager ensemble; each member built alone beside it, so one bench
run shows what the ensemble buys and costs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kiln.capture.ensemble import ensemble_module
from kiln.capture.sources import load_source, source_files
from kiln.config import EnsembleConfig, load_config, parse_config
from kiln.errors import ConfigError, SourceError
from kiln.pipeline.build import build, plan
from tests.conftest import skip_unless, write_config
from tests.techniques.tasks import TASKS, accuracy, config, member_a, member_b, member_c

MEMBERS = [f"{TASKS}:member_a", f"{TASKS}:member_b", f"{TASKS}:member_c"]
FAST_BENCH = {"batch": [1], "threads": 1, "min_seconds": 0.2, "min_iters": 10, "warmup_seconds": 0.05, "rounds": 2}


def _config(tmp: Path, targets: list[dict], **ensemble: object) -> Path:
    data = config("ens", ensemble={"members": MEMBERS, **ensemble})
    return write_config(tmp, {**data, "target": targets, "bench": FAST_BENCH})


@pytest.mark.parametrize(
    ("ensemble", "message"),
    [
        ({"members": ["a.py:f"]}, "at least 2"),
        ({"members": ["a.py:f", "b.py:g"], "method": "weighted"}, "one weight per member"),
        ({"members": ["a.py:f", "b.py:g"], "method": "weighted", "weights": [1.0]}, "one weight per member"),
        ({"members": ["a.py:f", "b.py:g"], "weights": [1.0, 2.0]}, "read by method 'weighted' only"),
        ({"members": ["a.py:f", "b.py:g"], "method": "vote", "average": "logits"}, "'average' does not apply"),
        ({"members": ["a.py:f", "a.py:f"]}, "distinct"),
    ],
)
def test_bad_ensembles_are_one_line(ensemble: dict, message: str) -> None:
    data = {"model": {"name": "e", "ensemble": ensemble}}
    with pytest.raises(ConfigError, match=message):
        parse_config(data, Path("."))


def test_source_and_ensemble_together_are_refused() -> None:
    data = {"model": {"name": "e", "source": "m.py:f", "ensemble": {"members": ["a.py:f", "b.py:g"]}}}
    with pytest.raises(ConfigError, match="not both"):
        parse_config(data, Path("."))


def test_member_names_come_from_the_sources_and_stay_unique() -> None:
    spec = EnsembleConfig(members=["models/a.py:build", "b.py:build", "hf:zoo/bert-tiny", "net.pt2"])
    assert spec.member_names() == ["build0", "build1", "bert_tiny", "net"]


def _outputs(members: list[torch.nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [m(x) for m in members]


def test_mean_weighted_and_logits_combine_as_documented() -> None:
    members, x = [member_a(), member_b(), member_c()], torch.randn(5, 16)
    logits = _outputs(members, x)
    probs = [torch.softmax(z, -1) for z in logits]
    with torch.no_grad():
        mean = ensemble_module(members, EnsembleConfig(members=MEMBERS))(x)["probabilities"]
        weighted = ensemble_module(members, EnsembleConfig(members=MEMBERS, method="weighted", weights=[2, 1, 1]))(x)
        raw = ensemble_module(members, EnsembleConfig(members=MEMBERS, average="logits"))(x)["logits"]
    torch.testing.assert_close(mean, sum(probs) / 3)
    torch.testing.assert_close(weighted["probabilities"], (2 * probs[0] + probs[1] + probs[2]) / 4)
    torch.testing.assert_close(raw, sum(logits) / 3)


def test_vote_takes_the_majority_and_breaks_ties_by_confidence() -> None:
    class Fixed(torch.nn.Module):
        def __init__(self, row: list[float]) -> None:
            super().__init__()
            self.row = torch.tensor([row])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.row.expand(x.shape[0], -1)

    x = torch.zeros(2, 3)
    majority = [Fixed([5.0, 0, 0]), Fixed([4.0, 0, 0]), Fixed([0, 0, 9.0])]
    spec = EnsembleConfig(members=["a.py:f", "b.py:f", "c.py:f"], method="vote")
    votes = ensemble_module(majority, spec)(x)["votes"]
    assert votes.argmax(-1).tolist() == [0, 0]  # two votes beat one confident member
    assert votes[0, 0] > 2 and votes[0, 2] < 2
    tie = [Fixed([3.0, 0, 0]), Fixed([0, 9.0, 0])]
    spec2 = EnsembleConfig(members=["a.py:f", "b.py:f"], method="vote")
    assert ensemble_module(tie, spec2)(x)["votes"].argmax(-1).tolist() == [1, 1]  # the more confident member


def test_members_must_share_inputs_and_be_pytorch_models(tmp_path: Path) -> None:
    model = parse_config(config("e", ensemble={"members": [MEMBERS[0], f"{TASKS}:other_inputs"]}), tmp_path).model
    with pytest.raises(SourceError, match=r"other_inputs' does not accept the inputs x\['batch', 16\]"):
        load_source(model, tmp_path)
    onnx_member = parse_config(config("e", ensemble={"members": [MEMBERS[0], "model.onnx"]}), tmp_path).model
    with pytest.raises(SourceError, match="an ONNX file"):
        load_source(onnx_member, tmp_path)


def test_the_ensemble_cache_key_covers_every_members_files(tmp_path: Path) -> None:
    model = parse_config(config("e", ensemble={"members": MEMBERS}), tmp_path).model
    assert Path(TASKS) in source_files(model, tmp_path)


def test_member_rows_follow_each_unpruned_target_and_not_in_narrowed_configs(tmp_path: Path) -> None:
    from kiln.pipeline.build import one_target

    path = _config(tmp_path, [{"name": "eager"}, {"name": "onnxruntime", "prune": {"method": "magnitude"}}])
    p = plan(load_config(path), tmp_path / "build")
    assert list(p.targets) == [
        "eager-fp32",
        "eager-fp32-member-member_a",
        "eager-fp32-member-member_b",
        "eager-fp32-member-member_c",
        "onnxruntime-fp32-magnitude30",
    ]
    only = one_target(load_config(path), p.targets["eager-fp32"].target)
    assert list(plan(only, tmp_path / "build").targets) == ["eager-fp32"]
    assert plan(only, tmp_path / "build").export_key == p.export_key  # comparing members changes no artifact


def test_a_member_row_naming_no_member_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, [{"name": "onnxruntime", "member": "nobody"}], compare_members=False)
    with pytest.raises(ConfigError, match="names member 'nobody'"):
        plan(load_config(path), tmp_path / "build")


@pytest.mark.slow
def test_ensemble_builds_as_one_artifact_gated_and_benched_against_its_members(tmp_path: Path) -> None:
    skip_unless("onnxruntime", run=True)
    from kiln.bench.run import BenchRun, bench
    from kiln.report.markdown import render_markdown

    path = _config(tmp_path, [{"name": "eager"}, {"name": "onnxruntime"}])
    results = build(load_config(path), tmp_path / "build")
    assert all(r.status == "built" for r in results), [str(r.error) for r in results]
    by_key = {r.target.key: r.manifest for r in results}
    whole = by_key["onnxruntime-fp32"]
    assert whole is not None and whole.gate.passed and whole.ensemble is not None and whole.member is None
    assert whole.signature.outputs == ("probabilities",)
    member = by_key["onnxruntime-fp32-member-member_c"]
    assert member is not None and member.member == "member_c" and member.gate.passed
    assert member.export_dir == "export-member-member_c"
    # One graph: every member's first layer is in the ensemble's one ONNX file.
    import onnx

    graph = onnx.load(str(tmp_path / "build" / "ens" / "onnxruntime-fp32" / "model.onnx")).graph
    names = {i.name for i in graph.initializer}
    assert {"members.0.body.0.weight", "members.2.body.0.weight"} <= names, sorted(names)[:8]
    assert whole.size_bytes > member.size_bytes
    # The gate measured each artifact's accuracy: the ensemble beats its weak member.
    assert whole.gate.evaluation.value > member.gate.evaluation.value
    assert member.gate.evaluation.value == pytest.approx(accuracy(member_c()), abs=1e-6)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        run, _ = bench(path, BenchRun(out=tmp_path / "build"))
    members = [c for c in run.cells if c.member]
    assert {c.member for c in members} == {"member_a", "member_b", "member_c"}
    report = render_markdown(run)
    assert "## The ensemble against its members" in report
    assert "| onnxruntime-fp32 | ensemble |" in report and "|  | member_c |" in report
