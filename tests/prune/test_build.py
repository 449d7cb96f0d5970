"""A real ``kiln build`` of pruned variants: each gets its own export stage, its artifacts pass
parity against the pruned eager model, and manifests carry the pruning report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.config import load_config
from kiln.pipeline.build import build
from kiln.train.prune import check_2to4
from tests.conftest import CNN, skip_unless, write_config

TARGETS = [
    {"name": "onnxruntime"},
    {"name": "onnxruntime", "prune": {"method": "channel", "amount": 0.5}},
    {"name": "openvino", "prune": {"method": "channel", "amount": 0.5}},
    {"name": "onnxruntime", "prune": {"method": "magnitude", "amount": 0.5}},
    {"name": "openvino", "prune": {"method": "2:4"}},
]


@pytest.mark.slow
def test_build_of_pruned_variants_passes_parity_and_records_the_report(tmp_path: Path) -> None:
    skip_unless("onnxruntime", run=True)
    skip_unless("openvino", run=True)
    path = write_config(tmp_path, {**CNN, "target": TARGETS})
    results = build(load_config(path), tmp_path / "build")
    model_dir = tmp_path / "build" / "cnn"

    assert [r.status for r in results] == ["built"] * len(TARGETS), [str(r.error) for r in results]
    keys = [r.target.key for r in results]
    assert keys == [
        "onnxruntime-fp32",
        "onnxruntime-fp32-channel50",
        "openvino-fp32-channel50",
        "onnxruntime-fp32-magnitude50",
        "openvino-fp32-2of450",
    ]
    for result in results:
        manifest = result.manifest
        assert manifest is not None and manifest.gate.passed, manifest and manifest.gate
        if result.target.prune is None:
            assert manifest.prune is None
            continue
        report = manifest.prune
        assert report.method == result.target.prune.method
        assert report.metric_dense == 1.0  # the evaluation labels are the dense model's predictions
        assert manifest.gate.evaluation.eager == 1.0  # the drop is measured against dense
        assert manifest.gate.evaluation.pruned_eager == report.metric_before_recovery
        assert (model_dir / f"export-{result.target.prune.slug}" / "program.pt2").is_file()

    dense, channel = results[0].manifest, results[1].manifest
    assert channel.prune.flops_after < channel.prune.flops_before
    assert channel.size_bytes < dense.size_bytes
    assert results[3].manifest.prune.sparsity == pytest.approx(0.5, abs=0.01)
    _check_2to4_survives_export(model_dir / "export-2of450", results[4].manifest.prune.layers_pruned)


def _check_2to4_survives_export(folder: Path, layers: list[str]) -> None:
    import onnx
    import torch
    from onnx import numpy_helper

    program = torch.export.load(str(folder / "program.pt2"))
    assert check_2to4(program.state_dict, layers)["all_verified"]
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(folder / "model.onnx")).graph.initializer}
    found = {f"{n}.weight": weights[f"{n}.weight"] for n in layers if f"{n}.weight" in weights}
    assert found, f"no pruned weight among the ONNX initializers {sorted(weights)}"
    assert check_2to4(found, layers)["all_verified"]
    assert all(np.count_nonzero(w) == w.size // 2 for w in found.values())
