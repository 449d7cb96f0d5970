"""The fleet on an in-process cluster of two kinds of node (custom resources on two raylets),
through an S3 store (moto's server on 127.0.0.1): each kind benchmarks what it can run, what no
node can serve is skipped with the reason, every cell carries its fingerprint, and an unchanged
re-run does no work."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.fleet.report import load_fleet
from kiln.fleet.resources import PKG, here
from kiln.fleet.runner import FleetOptions, run_fleet
from kiln.report import load_results
from tests.conftest import skip_unless
from tests.fleet.conftest import tiny_suite

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def two_kinds(ray_shutdown: None):
    """Kind a: this machine as kiln node advertises it; kind b: the same without OpenVINO."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    kind_a = here("kind-a")
    kind_b = {k: v for k, v in here("kind-b").items() if k != PKG + "openvino"}
    store_mb = 80 * 2**20
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "resources": kind_a,
            "include_dashboard": False,
            "object_store_memory": store_mb,
        },
    )
    cluster.add_node(num_cpus=1, resources=kind_b, object_store_memory=store_mb)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_each_kind_benches_what_it_runs_and_a_rerun_does_no_work(
    two_kinds: object, s3_store: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    for target in ("onnxruntime", "openvino"):
        skip_unless(target, run=True)
    targets = [
        {"name": "eager"},
        {"name": "onnxruntime"},
        {"name": "openvino"},
        {"name": "tensorrt", "precision": "fp16"},  # no node has an NVIDIA GPU
    ]
    url, storage = s3_store
    options = FleetOptions(
        suite=tiny_suite(tmp_path, targets),
        address="auto",
        store=f"{url}/{tmp_path.name}",
        out=tmp_path / "out",
        storage_options=storage,
        pending_timeout=300,
    )

    fleet = run_fleet(options)

    status = {s.id: s.status for s in fleet.stages}
    assert status["cnn:export"] == status["cnn:eager-fp32"] == status["cnn:openvino-fp32"] == "built"
    assert status["cnn:bench@kind-a"] == status["cnn:bench@kind-b"] == "measured"
    trt = next(s for s in fleet.stages if s.id == "cnn:tensorrt-fp16")
    assert trt.status == "skipped" and "NVIDIA GPU" in (trt.reason or "")
    cells = {run.kind: {c.key for c in run.results.cells if c.status == "ok"} for run in fleet.runs}
    assert cells == {
        "kind-a": {"eager-fp32", "onnxruntime-fp32", "openvino-fp32"},
        "kind-b": {"eager-fp32", "onnxruntime-fp32"},  # no OpenVINO on kind b: not benchmarked there
    }
    saved = load_fleet(tmp_path / "out" / "results.json")
    assert {run.kind: run.results.fingerprint.id for run in saved.runs} == {
        run.kind: run.results.fingerprint.id for run in fleet.runs
    }
    for run in saved.runs:
        assert load_results(tmp_path / "out" / run.kind / "cnn" / "results.json").fingerprint == run.results.fingerprint
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Hardware kinds" in report and "| kind-a |" in report and "| kind-b |" in report
    assert "NVIDIA GPU" in report

    again = run_fleet(options)

    assert {s.status for s in again.stages} == {"up to date", "cached", "skipped"}
    assert not [s for s in again.stages if s.host is not None]  # no task ran anywhere
    assert [r.results.cells for r in again.runs] == [r.results.cells for r in fleet.runs]
