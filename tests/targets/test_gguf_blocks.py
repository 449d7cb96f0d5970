"""int4 in the source's own blocks (kiln.quant.blocks, and each runtime's layout of them): weights dequantized from llama.cpp's
Q4_0, Q4_1 and Q8_0 (by gguf-py, as transformers reads a GGUF file) are found on their grid and
written back exactly; ordinary weights never are."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.quant import blocks
from kiln.targets.openvino import blocks as ov_blocks

gguf = pytest.importorskip("gguf")


def _dequantized(weights: np.ndarray, kind: str) -> np.ndarray:
    quant = gguf.GGMLQuantizationType[kind.upper()]
    return gguf.quants.dequantize(gguf.quants.quantize(weights, quant), quant).astype(np.float32)


@pytest.mark.parametrize("kind", blocks.KINDS)
def test_a_dequantized_weight_is_found_on_its_own_grid_and_rebuilt_exactly(kind: str) -> None:
    rng = np.random.default_rng(1)
    weights = (0.05 * rng.standard_normal((48, 96))).astype(np.float32)
    weights[3, :32] = 0.0  # a block of zeros has no step
    weights[5, 32:64] = 0.25  # nor does a constant one
    source = _dequantized(weights, kind)
    grid = blocks.fit(source)
    assert grid is not None and grid.kind == kind
    np.testing.assert_allclose(grid.dequantized(), source, rtol=0, atol=1e-7)
    assert grid.nbytes < source.nbytes / 3  # 4 or 8 bits and a step per 32, not 32 bits


@pytest.mark.parametrize("seed", range(5))
def test_ordinary_weights_lie_on_no_grid(seed: int) -> None:
    rng = np.random.default_rng(seed)
    weights = (0.05 * rng.standard_normal((64, 128))).astype(np.float32)
    assert blocks.fit(weights) is None
    assert blocks.fit(weights.astype(np.float16).astype(np.float32)) is None  # fp16 weights are no 4-bit grid
    nearly = _dequantized(weights, "q4_1") + np.float32(1e-3) * rng.standard_normal(weights.shape).astype(np.float32)
    assert blocks.fit(nearly) is None  # a grid with noise on it is not that grid
    assert blocks.fit(weights[:, :100]) is None  # no blocks of 32
    assert blocks.fit(np.zeros((8, 64), dtype=np.float32)) is None  # constant blocks fit any grid: no evidence


def test_q5_1_is_not_mistaken_for_a_4_bit_grid() -> None:
    weights = (0.05 * np.random.default_rng(7).standard_normal((32, 64))).astype(np.float32)
    assert blocks.fit(_dequantized(weights, "q5_1")) is None


@pytest.mark.parametrize("activations", ov_blocks.ACTIVATIONS)
def test_the_rewritten_ir_computes_what_the_float_one_did(activations: str) -> None:
    ov = pytest.importorskip("openvino")
    from openvino import opset13 as ops

    rng = np.random.default_rng(3)
    table = _dequantized((0.05 * rng.standard_normal((40, 64))).astype(np.float32), "q8_0")
    first = _dequantized((0.05 * rng.standard_normal((96, 64))).astype(np.float32), "q4_1")
    second = _dequantized((0.05 * rng.standard_normal((64, 96))).astype(np.float32), "q4_0")

    def model() -> object:
        ids = ops.parameter([1, -1], np.int64, name="ids")
        x = ops.gather(ops.constant(table, name="embed.weight"), ids, np.int64(0))
        x = ops.matmul(x, ops.constant(first.T.copy(), name="up.weight"), False, False)  # [in, out], as ONNX stores it
        x = ops.matmul(x, ops.constant(second, name="down.weight"), False, True)
        x = ops.matmul(x, ops.constant(table, name="embed.weight"), False, True)  # a tied head
        return ov.Model([x], [ids])

    core, ids = ov.Core(), {"ids": np.array([[1, 7, 39, 0]], dtype=np.int64)}
    expected = core.compile_model(model(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(ids)[0]
    rewritten = model()
    found = ov_blocks.plan(rewritten)
    assert found.complete and found.kinds() == {"q8_0": 1, "q4_1": 1, "q4_0": 1}
    assert ov_blocks.apply(rewritten, found, activations) == 4
    kinds = {
        op.get_output_element_type(0).get_type_name() for op in rewritten.get_ops() if op.get_type_name() == "Constant"
    }
    if activations == "float":
        assert {"u4", "u8"} <= kinds and "f32" in kinds  # f32: the zero points and the shapes, no weight
    else:  # signed blocks and no zero point: what the plugin's int8-activation kernel takes
        assert {"i4", "i8"} <= kinds and not {"u4", "u8"} & kinds
        assert not [op for op in rewritten.get_ops() if op.get_type_name() == "Subtract"]
    floats = [op for op in rewritten.get_ops() if op.get_type_name() == "Constant" and len(op.get_output_shape(0)) == 2]
    assert all(op.get_output_element_type(0).get_type_name() != "f32" for op in floats)
    # The same numbers in arithmetic: with the plugin's activation quantization off, f32 rounding apart.
    exact = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
    got = core.compile_model(rewritten, "CPU", exact)(ids)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # As kiln runs it (the plugin's default: activations int8 in groups of 32 where the blocks allow).
    run = core.compile_model(rewritten, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(ids)[0]
    scale = float(np.abs(expected).max())
    assert float(np.abs(run - expected).max()) <= (0 if activations == "float" else 0.02) * scale + 1e-5


def test_onnxruntime_writes_the_blocks_as_matmulnbits_and_computes_what_the_float_graph_did(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from kiln.targets.onnxruntime import blocks as ort_blocks

    rng = np.random.default_rng(5)
    table = _dequantized((0.05 * rng.standard_normal((40, 64))).astype(np.float32), "q8_0")
    first = _dequantized((0.05 * rng.standard_normal((96, 64))).astype(np.float32), "q4_1")
    second = _dequantized((0.05 * rng.standard_normal((64, 96))).astype(np.float32), "q4_0")
    weights = {"table": table, "up": first.T.copy(), "down": second.T.copy(), "head": table.T.copy()}
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["h"], name="embed"),
        helper.make_node("MatMul", ["h", "up"], ["u"], name="up_proj"),
        helper.make_node("MatMul", ["u", "down"], ["d"], name="down_proj"),
        helper.make_node("MatMul", ["d", "head"], ["logits"], name="lm_head"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "sequence", 40])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    ids = {"ids": np.array([[1, 7, 39, 0]], dtype=np.int64)}

    def run(proto: object) -> np.ndarray:
        return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, ids)[0]

    expected = run(model)
    outputs = {}
    for level in (1, 4):
        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(model)
        found = ort_blocks.plan(rewritten.graph)
        assert found.complete and found.kinds() == {"q4_1": 1, "q4_0": 1, "q8_0": 2}
        assert ort_blocks.rewrite(rewritten, found, level) == {"int4": 2, "int8": 1, "tables": 1}
        onnx.checker.check_model(rewritten)
        ops = [n.op_type for n in rewritten.graph.node]
        assert ops.count("MatMulNBits") == 3 and "Gather" in ops
        floats = [i for i in rewritten.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 2]
        assert all(min(i.dims) < 32 for i in floats)  # no float weight left: the minimums and scales only
        stored = [i for i in rewritten.graph.initializer if i.data_type == TensorProto.UINT8 and len(i.dims) == 3]
        assert len(stored) == 3  # the tied table reads the head's bytes: stored once
        outputs[level] = run(rewritten)
    np.testing.assert_allclose(outputs[1], expected, rtol=1e-5, atol=1e-5)  # fp32 compute: the reference
    assert np.abs(outputs[4] - expected).max() < 0.05 * np.abs(expected).max()  # int8 activations: close
