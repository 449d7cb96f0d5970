"""What lets a real-size LLM build within the machine's memory, on tiny models: ONNX external data
for a graph over a threshold (the threshold lowered so that a tiny Llama takes the path), int4
quantized from the saved file rather than from an in-memory copy, each stage's own peak memory
sampled and recorded, and the estimate that refuses a model too large before any work while a
1.1 B one passes on a 24 GiB machine.

The real figures (a 1.1 B Llama, SmolLM2) are measured by ``benchmarks/real_size_llm.py``, not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from kiln.capture.exporters import onnx as onnx_export
from kiln.config import parse_config
from kiln.pipeline import memory
from kiln.pipeline.build import build
from kiln.pipeline.progress import StagePeak, Stages, process_peak, rss_bytes
from tests.generative.models import tiny_llama_folder

GIB = 2**30
DIMS = {"sequence": {"min": 1, "max": 8}, "past": {"min": 0, "max": 23}}
# Random weights: int4's figures mean little (FIELD-NOTES), and a breach would start a search.
LOOSE = {"min_cosine": 0.0, "min_top1": 0.0, "max_perplexity_increase": 100.0}
TARGETS = [
    {"name": "onnxruntime", "precision": "fp32"},
    {"name": "onnxruntime", "precision": "int4", "tolerance": LOOSE},
]


def _build(folder: Path, out: str) -> dict[str, Any]:
    data = {
        "model": {"name": "lm", "source": "hf:model", "dims": DIMS},
        "generation": {"new_tokens": 4, "heldout_tokens": 32, "prompts": ["def main", "The quick"]},
        "target": TARGETS,
    }
    results = build(parse_config(data, folder), folder / out)
    for r in results:
        assert r.error is None, f"{r.target.key}: {r.error}"
    return {r.target.key: r for r in results}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same tiny Llama built twice: as small graphs are (one file), and with the external
    data threshold at 0 bytes (every weight in ``model.onnx.data``, as a 1.1 B model's)."""
    folder = tmp_path_factory.mktemp("lm")
    tiny_llama_folder(folder / "model")
    one_file = _build(folder, "one-file")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "EXTERNAL_DATA_ABOVE", 0)
        external = _build(folder, "external")
    return {"root": folder, "one-file": one_file, "external": external}


def _initializers(path: Path) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    model = onnx.load(str(path))  # external data, if any, read from beside it
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_export_over_the_threshold_writes_external_data_and_a_small_graph(builds: dict[str, Any]) -> None:
    root = builds["root"]
    small, big = root / "one-file" / "lm" / "export", root / "external" / "lm" / "export"
    assert not (small / "model.onnx.data").exists()
    data, whole = big / "model.onnx.data", (small / "model.onnx").stat().st_size
    assert data.is_file() and data.stat().st_size > 0.5 * whole  # the weights (the tiniest stay in the graph)
    assert (big / "model.onnx").stat().st_size < whole - 0.9 * data.stat().st_size
    assert onnx_export.data_files(big / "model.onnx") == [data]
    onnx.checker.check_model(str(big / "model.onnx"), full_check=True)
    # The same weights, whichever way they were written.
    one, other = _initializers(small / "model.onnx"), _initializers(big / "model.onnx")
    assert sorted(one) == sorted(other)
    assert all(np.array_equal(one[k], other[k]) for k in one)


def test_fp32_artifact_carries_its_external_data_and_gates(builds: dict[str, Any]) -> None:
    result = builds["external"]["onnxruntime-fp32"]
    folder = builds["root"] / "external" / "lm" / "onnxruntime-fp32"
    assert (folder / "model.onnx.data").is_file()
    assert "model.onnx.data" in {f.path for f in result.manifest.files}
    assert result.manifest.gate.passed is True
    assert result.manifest.gate.generation.per_prompt[0].tokens == (
        builds["one-file"]["onnxruntime-fp32"].manifest.gate.generation.per_prompt[0].tokens
    )


def test_int4_quantized_from_the_saved_file_is_the_in_memory_result(builds: dict[str, Any]) -> None:
    """The int4 artifact made by reading each weight from ``model.onnx.data`` holds exactly what
    the one made from a graph loaded whole holds (the threshold at 0 writes it external too)."""
    made = {how: builds["root"] / how / "lm" / "onnxruntime-int4" / "model.onnx" for how in ("one-file", "external")}
    assert not (made["one-file"].parent / "model.onnx.data").exists()
    assert (made["external"].parent / "model.onnx.data").is_file()
    one, other = _initializers(made["one-file"]), _initializers(made["external"])
    assert sorted(one) == sorted(other)
    assert all(np.array_equal(one[k], other[k]) for k in one)
    ops = [n.op_type for n in onnx.load(str(made["external"])).graph.node]
    assert ops.count("MatMulNBits") >= 14  # 2 layers x 7 projections, the head too
    manifest = builds["external"]["onnxruntime-int4"].manifest
    assert manifest.gate.passed is True and manifest.execution.quantization["matmul_nbits"]


def test_save_onnx_writes_external_data_over_the_threshold(tmp_path: Path) -> None:
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx_export.save_onnx(model, tmp_path / "a.onnx", external_above=1 << 20)
    onnx_export.save_onnx(model, tmp_path / "b.onnx", external_above=1024)
    assert not (tmp_path / "a.onnx.data").exists() and (tmp_path / "b.onnx.data").stat().st_size == 4096 * 4
    assert np.array_equal(_initializers(tmp_path / "b.onnx")["w"], _initializers(tmp_path / "a.onnx")["w"])


def test_each_stage_records_its_own_peak_and_what_it_left(builds: dict[str, Any]) -> None:
    stages = builds["external"]["onnxruntime-int4"].manifest.stages
    assert [s.name for s in stages] == ["load", "data", "export", "compile", "gate", "write"]
    for s in stages:
        assert s.own_peak_rss_bytes is not None and s.end_rss_bytes is not None
        assert 0 < s.own_peak_rss_bytes <= s.peak_rss_bytes  # within the process's peak so far
        assert s.end_rss_bytes <= s.own_peak_rss_bytes


def test_stage_peak_sees_memory_held_and_freed_within_it() -> None:
    """A stage that holds 256 MiB for a moment and frees it: its own peak has them and the RSS it
    leaves does not; the next stage's own peak does not (the process's peak so far, which only
    grows, cannot say which stage held what); a stage around both saw them."""
    stages = Stages("m", lambda _: None)
    with StagePeak() as outer:
        with stages.stage("export"):
            before = rss_bytes()
            held = np.ones(2**25)  # 256 MiB, every page touched
            del held
        with stages.stage("compile"):
            bytearray(2**20)
    export, compile_ = stages.records
    assert export.own_peak_rss_bytes is not None and export.own_peak_rss_bytes - before >= 250 * 2**20
    assert export.end_rss_bytes is not None and export.own_peak_rss_bytes - export.end_rss_bytes >= 200 * 2**20
    assert (
        compile_.own_peak_rss_bytes is not None
        and compile_.own_peak_rss_bytes < export.own_peak_rss_bytes - 200 * 2**20
    )
    assert compile_.peak_rss_bytes >= export.own_peak_rss_bytes  # the process's peak so far keeps it
    assert outer.peak is not None and outer.peak >= export.own_peak_rss_bytes
    assert process_peak() >= export.own_peak_rss_bytes


TINYLLAMA_FP32 = memory.Weights(1_100_048_384, 4 * 1_100_048_384, "safetensors headers")
LLAMA_3B_FP32 = memory.Weights(3_426_473_984, 4 * 3_426_473_984, "safetensors headers")


def test_estimate_lets_a_1_1b_fp32_llama_build_on_a_24_gib_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_meminfo", lambda: {"MemTotal": 24 * GIB, "MemAvailable": 22 * GIB})
    monkeypatch.setattr(memory, "_cgroup_room", lambda: None)
    monkeypatch.setattr(memory, "_rss_bytes", lambda: 0)  # a fresh build's, not this test process's
    # The bound the build is held to: at most 2.5x the fp32 weights, and the estimate says so.
    assert memory.estimate(TINYLLAMA_FP32) <= 2.5 * TINYLLAMA_FP32.bytes
    memory.check_fits("tinyllama", TINYLLAMA_FP32)
    with pytest.raises(memory.ResourceError, match=r"tinyllama3b: this build needs about \d+\.\d GiB"):
        memory.check_fits("tinyllama3b", LLAMA_3B_FP32)
