"""ORT calibration in chunks: memory bounded by the chunk, ranges unchanged for min-max."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.quant.ort import SampleReader, chunk_size


@pytest.mark.parametrize(
    ("samples", "limit", "expected"),
    [(32, 32, None), (8, 32, None), (300, 32, 30), (300, 8, 6), (64, 32, 32), (97, 32, 1), (10, 4, 2)],
)
def test_chunk_size_is_the_largest_divisor_up_to_the_limit(samples: int, limit: int, expected: int | None) -> None:
    assert chunk_size(samples, limit) == expected
    if expected is not None:
        assert samples % expected == 0  # ORT refuses a count its stride does not divide


def test_sample_reader_hands_out_only_the_inputs_it_was_named_and_one_range_at_a_time() -> None:
    samples = [{"x": np.full((1,), i, np.float32), "label": i} for i in range(5)]
    reader = SampleReader(samples, {"x"})
    assert len(reader) == 5
    assert [int(s["x"][0]) for s in iter(reader.get_next, None)] == [0, 1, 2, 3, 4]
    reader.set_range(start_index=1, end_index=3)
    first = reader.get_next()
    assert first is not None and set(first) == {"x"}
    assert [int(first["x"][0]), *(int(s["x"][0]) for s in iter(reader.get_next, None))] == [1, 2]
    reader.set_range(start_index=4, end_index=8)  # past the end: what is left, then done
    assert [int(s["x"][0]) for s in iter(reader.get_next, None)] == [4]


def _scales(model: Path) -> dict[str, float]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model)).graph
    return {t.name: float(numpy_helper.to_array(t).ravel()[0]) for t in graph.initializer if t.name.endswith("_scale")}


def test_strided_min_max_calibration_finds_the_same_ranges_as_one_pass(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    quantization = pytest.importorskip("onnxruntime.quantization")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    src = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(src))
    # the widest sample sits in the first chunk: a calibrator that kept only its last pass would
    # find narrower ranges
    samples = [{"x": rng.standard_normal((1, 8)).astype(np.float32) * (1 + 3 * (i == 0))} for i in range(12)]
    scales = {}
    for name, extra in (("one", {}), ("strided", {"CalibStridedMinMax": chunk_size(12, 4)})):
        out = tmp_path / f"{name}.onnx"
        quantization.quantize_static(
            str(src),
            str(out),
            SampleReader(samples, {"x"}),
            calibrate_method=quantization.CalibrationMethod.MinMax,
            extra_options=extra,
        )
        scales[name] = _scales(out)
    assert scales["one"] and scales["one"].keys() == scales["strided"].keys()
    for tensor, scale in scales["one"].items():
        assert scales["strided"][tensor] == pytest.approx(scale, rel=1e-6), tensor
