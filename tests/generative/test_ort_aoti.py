"""Weights at 8 and 4 bits on causal-LM step graphs: ONNX Runtime's ``int4`` (MatMulNBits) and
``int8-dynamic``, AOTInductor's torchao ``int8-weights`` / ``int4-weights``.

The fast tests check the options and the graph preparation on hand-made ONNX graphs; the builds
(one per target, every precision in it: one export, one eager reference) run on the trained tiny
Llama, where quantization figures mean something (random weights make int4 look far worse).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from kiln.config import TargetConfig, parse_config
from kiln.decoding import generate, session_for
from kiln.errors import ConfigError
from kiln.pipeline.build import build
from kiln.targets import implementation, target_options
from kiln.targets.base import Artifact, RunOptions
from tests.conftest import selected_targets
from tests.generative.models import stdlib_llama_folder

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One build of every target x precision the selected tests of this module ask for."""
    wanted = selected_targets(request, buildable=False)
    folder = tmp_path_factory.mktemp("lm")
    stdlib_llama_folder(folder / "model")
    data = {
        "model": {
            "name": "lm",
            "source": "hf:model",
            "dims": {"sequence": {"min": 1, "max": 16}, "past": {"min": 0, "max": 47}},
        },
        "generation": {"new_tokens": NEW_TOKENS, "heldout_tokens": 96},
        "target": [{"name": t, "precision": p} for t, p in wanted],
    }
    results = build(parse_config(data, folder), folder / "build")
    return {"results": {r.target.key: r for r in results}, "root": folder}


def _manifest(built: dict[str, Any], target: str, precision: str) -> Any:
    result = built["results"][f"{target}-{precision}"]
    assert result.error is None, f"{target}:{precision} failed: {result.error}"
    return result.manifest


def _decodes_like_the_gate(built: dict[str, Any], target: str, precision: str) -> None:
    """A fresh runner of the built artifact decodes the gate's first prompt to the same tokens."""
    manifest = _manifest(built, target, precision)
    artifact = Artifact.from_manifest(built["root"] / "build" / "lm" / f"{target}-{precision}")
    first = manifest.gate.generation.per_prompt[0]
    with implementation(target).load(artifact, RunOptions(threads=1)) as runner:
        session = session_for(runner, artifact.signature)
        assert list(generate(session, first.prompt_ids, NEW_TOKENS)) == first.tokens
        session.close()


# Options: one line naming the key, before any work.


def _options(name: str, precision: str, **values: Any) -> Any:
    return target_options(TargetConfig(name=name, precision=precision, options=values))


@pytest.mark.parametrize(
    ("name", "precision", "values", "fragment"),
    [
        ("onnxruntime", "int4", {"block_size": 48}, "block_size: must be a power of two from 16 to 256"),
        ("onnxruntime", "int4", {"block_size": 8}, "block_size: must be a power of two from 16 to 256"),
        ("onnxruntime", "int4", {"block_size": 512}, "block_size: must be a power of two from 16 to 256"),
        ("onnxruntime", "int4", {"accuracy_level": 5}, "accuracy_level: Input should be 0, 1, 2, 3 or 4"),
        ("onnxruntime", "int4", {"lm_head": "int2"}, "lm_head: Input should be 'int4', 'int8' or 'fp32'"),
        ("onnxruntime", "int8", {"block_size": 64}, "block_size: applies to MatMulNBits"),
        ("onnxruntime", "int8-dynamic", {"lm_head": "fp32"}, "lm_head: applies to onnxruntime:int4 only"),
        ("onnxruntime", "int4", {"activations": "none"}, "activations: applies to onnxruntime:int8-dynamic only"),
        ("onnxruntime", "int8-dynamic", {"activations": "static"}, "activations: Input should be 'dynamic' or 'none'"),
        ("onnxruntime", "int8-dynamic", {"algorithm": "hqq"}, "algorithm: applies to onnxruntime:int4 only"),
        ("aoti", "int4-weights", {"group_size": 256}, "group_size: Input should be 32, 64 or 128"),
        ("aoti", "int8-weights", {"group_size": 64}, "group_size: applies to aoti:int4-weights only"),
        ("aoti", "int8-weights", {"lm_head": "int4"}, "lm_head: 'int4' needs aoti:int4-weights"),
        ("aoti", "fp32", {"lm_head": "int8"}, "lm_head: applies to aoti:int8-weights and aoti:int4-weights only"),
        ("aoti", "int4-weights", {"compute": "fp16"}, "compute: Input should be 'bf16' or 'fp32'"),
    ],
)
def test_bad_weight_only_option_is_one_config_error_line(
    name: str, precision: str, values: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _options(name, precision, **values)
    message = str(err.value)
    assert message.startswith(f"[[target]] {name}:{precision} options: ")
    assert fragment in message and "\n" not in message and err.value.exit_code == 2


def test_weight_only_defaults_are_what_was_measured() -> None:
    ort = _options("onnxruntime", "int4")
    assert (ort.block_size, ort.symmetric, ort.accuracy_level) == (128, True, 4)
    assert (ort.lm_head, ort.embeddings) == ("int8", None)
    assert (ort.embeddings_for(generative=True), ort.embeddings_for(generative=False)) == ("int4", "fp32")
    aoti = _options("aoti", "int4-weights")
    assert (aoti.group_size, aoti.lm_head, aoti.compute) == (None, None, None)
    assert _options("onnxruntime", "int4", block_size=256, lm_head="fp32").block_size == 256


# ONNX Runtime's graph preparation, on hand-made graphs.


def _graph(nodes: list[Any], inits: dict[str, np.ndarray], k: int, n: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(v, name) for name, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model


def _run(model: Any, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.target("onnxruntime", stage="prepare")
def test_gemm_and_a_transposed_tied_weight_become_quantizable_matmuls_with_the_same_result() -> None:
    from onnx import helper

    from kiln.targets.onnxruntime.nbits import _inventory, _prepare, lm_heads

    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((32, 16)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    table = rng.standard_normal((24, 32)).astype(np.float32)  # an embedding table, tied to the head
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="gemm", transB=1),
        helper.make_node("Transpose", ["table"], ["table_t"], name="tie", perm=[1, 0]),
        helper.make_node("MatMul", ["h", "table_t"], ["logits"], name="head"),
    ]
    model = _graph(nodes, {"w1": w1, "b1": b1, "table": table}, 16, 24)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    expected = _run(model, x)

    assert lm_heads(model.graph) == ["head"]
    done = _prepare(model.graph)

    assert done == {"gemm_as_matmul": 1, "transposed_weight_copies": 1}
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add", "MatMul"]  # the Transpose is gone
    assert _inventory(model.graph) == {"gemm": [16, 32], "head": [32, 24]}
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.target("onnxruntime", stage="prepare")
@pytest.mark.parametrize("algorithm", ["rtn", "hqq"])
def test_each_int4_algorithm_writes_one_matmulnbits_close_to_the_float_product(algorithm: str) -> None:
    from onnx import helper, numpy_helper

    from kiln.targets.onnxruntime.nbits import _quiet_import
    from kiln.targets.onnxruntime.nbits import _run as quantize

    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 64)).astype(np.float32)
    model = _graph([helper.make_node("MatMul", ["x", "w"], ["logits"], name="mm")], {"w": w}, 256, 64)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    with _quiet_import() as module:
        done = quantize(module, model, _options("onnxruntime", "int4", algorithm=algorithm), 4, [], ("MatMul",))
    assert [n.op_type for n in done.graph.node] == ["MatMulNBits"]
    zero_points = [i for i in done.graph.initializer if i.name.endswith("zero_points")]
    # HQQ fits float zero points (asymmetric); RTN's default here is symmetric, no zero points
    kinds = {"rtn": [], "hqq": ["f"]}[algorithm]
    assert [numpy_helper.to_array(z).dtype.kind for z in zero_points] == kinds
    error = np.abs(_run(done, x) - x @ w).mean() / np.abs(x @ w).mean()
    assert error < 0.15, error


@pytest.mark.target("onnxruntime", stage="prepare")
def test_hqq_layers_take_int4_embeddings_fitted_by_rtn(tmp_path: Path) -> None:
    """HQQ's float zero points do not fit GatherBlockQuantized: the table gets RTN in a pass of its own."""
    import onnx
    from onnx import TensorProto, helper

    from kiln.targets.onnxruntime.nbits import weight_only

    rng = np.random.default_rng(0)
    table, w = rng.standard_normal((512, 64)).astype(np.float32), rng.standard_normal((64, 64)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["h"], name="embed"),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="mm"),
        helper.make_node("MatMul", ["y", "head"], ["logits"], name="lm_head"),
    ]
    head = rng.standard_normal((64, 512)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 512])],
        [onnx.numpy_helper.from_array(v, n) for n, v in {"table": table, "w": w, "head": head}.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "src.onnx"))
    options = _options("onnxruntime", "int4", algorithm="hqq", embeddings="int4", block_size=32)
    ctx = SimpleNamespace(options=options, target=SimpleNamespace(key="onnxruntime-int4"))
    info = weight_only(ctx, tmp_path / "src.onnx", tmp_path / "q.onnx", 4)  # type: ignore[arg-type]
    done = onnx.load(str(tmp_path / "q.onnx"))
    assert sorted(n.op_type for n in done.graph.node) == ["GatherBlockQuantized", "MatMulNBits", "MatMulNBits"]
    assert info["quantization"]["embeddings"] == "int4 GatherBlockQuantized (RTN: HQQ fits MatMul weights only)"
    import onnxruntime as ort

    ids = np.array([3, 17, 400], dtype=np.int64)
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    want = table[ids] @ w @ head
    assert np.abs(got - want).mean() / np.abs(want).mean() < 0.2


@pytest.mark.target("onnxruntime", stage="prepare")
def test_importing_ort_s_block_quantizer_leaves_the_root_logger_alone() -> None:
    # matmul_nbits_quantizer calls logging.basicConfig(level=INFO) when imported.
    from kiln.targets.onnxruntime.nbits import _quiet_import

    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    with _quiet_import() as module:
        assert hasattr(module, "MatMulNBitsQuantizer")
    assert (list(root.handlers), root.level) == before


# Builds: every case below is one target x precision of the one build above.


@pytest.mark.target(stage="run")
@pytest.mark.parametrize(("target", "precision"), [("onnxruntime", "fp32"), ("aoti", "fp32")])
def test_fp32_generates_eager_s_tokens_exactly(built: dict[str, Any], target: str, precision: str) -> None:
    gate = _manifest(built, target, precision).gate
    assert gate.passed, gate.breaches
    assert gate.generation.exact and gate.generation.token_agreement == 1.0
    assert abs(gate.generation.perplexity_increase) < 1e-3
    _decodes_like_the_gate(built, target, precision)


QUANTIZED = [
    ("onnxruntime", "int8-dynamic"),
    ("onnxruntime", "int4"),
    ("aoti", "int8-weights"),
    ("aoti", "int4-weights"),
]


@pytest.mark.target(stage="run")
@pytest.mark.parametrize(("target", "precision"), QUANTIZED)
def test_quantized_passes_the_generation_gate_with_its_figures_recorded(
    built: dict[str, Any], target: str, precision: str
) -> None:
    manifest = _manifest(built, target, precision)
    generation = manifest.gate.generation
    assert generation is not None and generation.passed, generation.breaches
    assert generation.prompts >= 3 and generation.new_tokens == NEW_TOKENS
    assert 0 < generation.token_agreement <= 1 and generation.forced_top1 >= 0.9
    assert abs(generation.perplexity_increase) <= 0.10
    assert manifest.size_bytes < _manifest(built, target, "fp32").size_bytes
    _decodes_like_the_gate(built, target, precision)


@pytest.mark.target(stage="run")
@pytest.mark.parametrize(("target", "precision"), [("onnxruntime", "int4")])
def test_onnxruntime_int4_records_what_became_matmulnbits_and_what_stayed_float(
    built: dict[str, Any], target: str, precision: str
) -> None:
    import onnx

    execution = _manifest(built, target, precision).execution
    q = execution.get("quantization")
    # 2 layers x 7 projections in int4; the LM head int8; the embeddings int4 (a causal LM's
    # default); attention untouched.
    assert q["matmul_nbits"] == {"int4": 14, "int8": 1}
    assert q["lm_head"]["policy"] == "int8" and len(q["lm_head"]["nodes"]) == 1
    assert q["weights"].startswith("int4 symmetric, blocks of 128")  # not the 8-bit head's width
    assert q["embeddings"].startswith("int4 GatherBlockQuantized") and q["left_float"] == {}
    assert q["activation_matmuls"] == 4  # scores and mixing in each of 2 layers
    assert q["padded_last_block"] == []  # K = 128 and 256: whole blocks
    assert execution.execution_precision == "int4 weights, int8 compute"
    assert execution.notes[0].startswith("int4: 14 MatMul(s) as int4 MatMulNBits (block 128), lm head int8")
    graph = onnx.load(str(built["root"] / "build" / "lm" / "onnxruntime-int4" / "model.onnx")).graph
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 15
    assert sum(n.op_type == "GatherBlockQuantized" for n in graph.node) == 1


@pytest.mark.target(stage="run")
@pytest.mark.parametrize(("target", "precision"), [("onnxruntime", "int8-dynamic")])
def test_onnxruntime_int8_dynamic_on_a_causal_lm_is_weight_only_matmulnbits(
    built: dict[str, Any], target: str, precision: str
) -> None:
    execution = _manifest(built, target, precision).execution
    q = execution.get("quantization")
    # every weighted MatMul, the head included, 8-bit; activations float (no MatMulInteger)
    assert q["matmul_nbits"] == {"int8": 15} and q["lm_head"]["policy"] == "int8"
    assert q["embeddings"].startswith("fp32") and q["left_float"] == {}
    assert execution.execution_precision == "int8 weights, int8 compute"
    assert execution.notes[0].startswith("int8: 15 MatMul(s) as int8 MatMulNBits (block 128), lm head int8")


def test_int8_dynamic_activations_default_follows_the_model_and_can_be_asked_for() -> None:
    default = _options("onnxruntime", "int8-dynamic")
    assert default.weight_only_int8(generative=True) and not default.weight_only_int8(generative=False)
    asked = _options("onnxruntime", "int8-dynamic", activations="dynamic")
    assert not asked.weight_only_int8(generative=True)
    assert _options("onnxruntime", "int8-dynamic", activations="none").weight_only_int8(generative=False)


@pytest.mark.target(stage="run")
@pytest.mark.parametrize(("target", "precision"), [("aoti", "int8-weights"), ("aoti", "int4-weights")])
def test_aoti_weight_only_records_its_policy_and_kernels(built: dict[str, Any], target: str, precision: str) -> None:
    execution = _manifest(built, target, precision).execution
    q = execution.get("quantization")
    bits = precision.split("-")[0]
    assert execution.execution_precision == f"{bits} weights, bf16 compute"
    assert q["lm_head"]["policy"] == "int8" and q["embeddings"].startswith("fp32")
    assert q["left_float"] == {} and q["untied_copies"] == []
    assert q["linears"] == ({"int4 g128": 14, "int8": 1} if bits == "int4" else {"int8": 15})
    assert q["kernel_references"] > 0, "the generated code calls the weight-only kernel"


@pytest.mark.target(stage="run")
@pytest.mark.parametrize(("target", "precision"), [("onnxruntime", "fp32"), ("onnxruntime", "int4")])
def test_onnxruntime_genai_opens_the_artifact_and_decodes_kiln_s_tokens(
    built: dict[str, Any], target: str, precision: str
) -> None:
    """The runtime's own LLM API: onnxruntime_genai.Model reads the artifact folder (genai_config.json
    and the tokenizer beside kiln's record) and greedy-decodes the gate's tokens from kiln's prompt
    ids. Its own encoder (0.18) leaves out the BOS this tokenizer's post-processor adds, as
    transformers and kiln do not: the ids otherwise agree."""
    og = pytest.importorskip("onnxruntime_genai")
    manifest = _manifest(built, target, precision)
    folder = built["root"] / "build" / "lm" / f"{target}-{precision}"
    assert {"genai_config.json", "tokenizer.json"} <= {f.path for f in manifest.files}
    model = og.Model(str(folder))
    first = manifest.gate.generation.per_prompt[0]
    tokens = og.Tokenizer(model)
    bos = manifest.signature.cache.bos_token_id
    assert first.prompt_ids[0] == bos and [int(t) for t in tokens.encode(first.prompt)] == first.prompt_ids[1:]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(first.prompt_ids) + NEW_TOKENS, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(first.prompt_ids)
    out: list[int] = []
    while not generator.is_done() and len(out) < NEW_TOKENS:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    assert out == first.tokens
