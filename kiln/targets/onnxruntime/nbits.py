"""Weight-only int4 (and int8) for ONNX Runtime: ``MatMulNBits`` (and, when asked, ``GatherBlockQuantized``).

Toolchain: onnxruntime 1.31, ``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer``
with its default round-to-nearest block quantizer in QOperator form: the ``com.microsoft``
contrib ops the CPU provider runs natively. No calibration data: the weights alone decide.

Policy (options in :class:`~kiln.targets.onnxruntime.options.ORTOptions`), recorded per artifact:

- Every MatMul with a constant 2-D weight becomes ``MatMulNBits``, 4 bits, blocks of
  ``block_size`` along the input width K. A K that is not a multiple of the block is quantized
  with its last block zero-padded (ORT's own handling, measured as accurate as a full block);
  those nodes are listed.
- The LM head, the MatMul(s) producing ``logits``, is ``int8`` MatMulNBits by default: its
  error lands directly on every next-token distribution. Measured on a 128-wide Llama trained
  on the stdlib's sources: teacher-forced top-1 0.986 with an int8 head, 0.944 with an int4 one;
  on a 21 M-parameter Llama (vocabulary 8192) the int8 head decodes at 98 % of the int4 head's
  speed, an fp32 head at 29 %. ``lm_head = "int4"`` or ``"fp32"`` are the alternatives.
- ``int8-dynamic`` on a causal LM is weight-only too (``activations = "none"``, the default
  there): every weighted MatMul, the head included, 8-bit MatMulNBits; activations stay float.
  Per-tensor dynamic activation quantization (``quantize_dynamic``) broke SmolLM2-135M
  (perplexity +52.7 %); 8-bit MatMulNBits is what ONNX Runtime GenAI's model builder uses.
- Embedding tables (``Gather`` on an initializer): int4 ``GatherBlockQuantized`` for a causal LM
  (size only: a lookup has no compute to save; ORT then raises the opset to 21, which int4
  tensors need), fp32 for anything else; ``embeddings`` overrides either way.
- The quantizer takes MatMuls with a stored weight only, so the graph is prepared first: a
  ``Gemm`` with a stored weight (GPT-2's Conv1D, any 2-D Linear) becomes ``MatMul`` + ``Add``, and
  a weight that is a ``Transpose`` of a stored tensor (a tied LM head) gets its own transposed
  copy (the embedding keeps the original).
- Left float, and why: other computed weights and N-D weights. MatMuls of two activations
  (attention scores and mixing) have no weights and are only counted. Where nothing is left to
  quantize the artifact is fp32 and says so (``execution_precision``), rather than failing.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.capture.exporters.onnx import beside, save_onnx
from kiln.errors import TargetBuildError
from kiln.quant.blocks import BLOCK
from kiln.targets.base import CompileContext
from kiln.targets.onnxruntime import blocks
from kiln.targets.onnxruntime.options import QUANTIZER_INT4, ORTOptions

QUANTIZER = "onnxruntime.quantization.matmul_nbits_quantizer"
# Ops a head's output may pass through on its way to `logits` (scaling, soft-capping, casts).
HEAD_PASSTHROUGH = ("Add", "Mul", "Div", "Tanh", "Cast", "Reshape", "Identity")
COMPUTE = {0: "fp32 (unset)", 1: "fp32", 2: "fp16 or better", 3: "bf16 or better", 4: "int8"}


@contextlib.contextmanager
def _quiet_import() -> Iterator[Any]:
    """The quantizer module, imported without its side effect: it calls ``logging.basicConfig``
    at INFO on import, which would print every library's INFO records for the rest of the
    process. Its own per-node INFO/opset WARNING lines are silenced while it runs."""
    import importlib

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    module = importlib.import_module(QUANTIZER)
    root.handlers[:], root.level = handlers, level
    own = logging.getLogger(QUANTIZER)
    before = own.level
    own.setLevel(logging.ERROR)
    try:
        yield module
    finally:
        own.setLevel(before)


def lm_heads(graph: Any, output: str = "logits") -> list[str]:
    """Names of the MatMul/Gemm nodes whose result becomes ``output`` (through a few elementwise ops)."""
    producer = {out: n for n in graph.node for out in n.output}
    if output not in {o.name for o in graph.output}:
        return []
    frontier, found = [producer.get(output)], []
    for _ in range(4):
        nodes = [n for n in frontier if n is not None]
        found += [n.name for n in nodes if n.op_type in ("MatMul", "Gemm")]
        if found:
            return found
        frontier = [producer.get(i) for n in nodes if n.op_type in HEAD_PASSTHROUGH for i in n.input]
    return []


def _inventory(graph: Any) -> dict[str, Any]:
    """Each MatMul/Gemm: its weight's shape when stored as an initializer, else why there is none."""
    inits = {t.name: t for t in graph.initializer}
    consts = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {out: n for n in graph.node for out in n.output}

    def computed_from_constants(name: str, depth: int = 0) -> bool:
        node = producer.get(name)
        if node is None or depth > 4:
            return False
        return all(i in inits or i in consts or computed_from_constants(i, depth + 1) for i in node.input if i)

    rows: dict[str, Any] = {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        weight = node.input[1]
        if weight in inits:
            rows[node.name] = list(inits[weight].dims)
        elif computed_from_constants(weight):
            rows[node.name] = "weight computed in the graph (e.g. a transposed tied embedding)"
        else:
            rows[node.name] = None  # two activations: nothing to quantize
    return rows


def _name_nodes(graph: Any) -> None:
    """Exclusions go by node name: give unnamed nodes one."""
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"kiln_{node.op_type.lower()}_{i}"


def _prepare(graph: Any) -> dict[str, int]:
    """Rewrite what the quantizer cannot take into what it can: ``Gemm(A, W, C)`` with a stored
    ``W`` (no transA, alpha = beta = 1) into ``MatMul(A, W) + C``, and ``MatMul(A, Transpose(W))``
    with a stored ``W`` into ``MatMul(A, W_t)`` on a transposed copy."""
    from onnx import helper

    inits = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    nodes, gemms, untied = [], 0, 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type == "Gemm"
            and node.input[1] in inits
            and not attrs.get("transA", 0)
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
        ):
            weight = node.input[1]
            if attrs.get("transB", 0):
                weight = _transposed(graph, inits, weight)
            out = node.output[0] + "_matmul" if len(node.input) > 2 and node.input[2] else node.output[0]
            nodes.append(helper.make_node("MatMul", [node.input[0], weight], [out], name=node.name))
            if out != node.output[0]:
                nodes.append(helper.make_node("Add", [out, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
            gemms += 1
            continue
        source = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        if (
            source is not None
            and source.op_type == "Transpose"
            and source.input[0] in inits
            and len(inits[source.input[0]].dims) == 2
        ):
            node.input[1] = _transposed(graph, inits, source.input[0])
            untied += 1
        nodes.append(node)
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    graph.ClearField("node")  # a Transpose whose every reader now has its own copy is dropped
    graph.node.extend(n for n in nodes if n.op_type != "Transpose" or any(o in used for o in n.output))
    return {"gemm_as_matmul": gemms, "transposed_weight_copies": untied}


def _transposed(graph: Any, inits: dict[str, Any], name: str) -> str:
    """A stored transposed copy of the 2-D initializer ``name`` (made once)."""
    from onnx import numpy_helper

    copy = f"{name}_kiln_t"
    if copy not in inits:
        tensor = numpy_helper.from_array(numpy_helper.to_array(inits[name]).T.copy(), copy)
        graph.initializer.append(tensor)
        inits[copy] = tensor
    return copy


ALGORITHMS = {"rtn": "RTN", "hqq": "HQQ"}


def _algo_config(module: Any, options: ORTOptions, bits: int, ops: tuple[str, ...]) -> Any:
    """ORT's config for HQQ; ``None`` is its default round-to-nearest."""
    if bits != 4 or options.algorithm == "rtn":
        return None
    return module.HQQWeightOnlyQuantConfig(block_size=options.block_size, bits=4, op_types_to_quantize=ops)


def _run(module: Any, model: Any, options: ORTOptions, bits: int, exclude: list[str], ops: tuple[str, ...]) -> Any:
    algo = _algo_config(module, options, bits, ops)
    quantizer = module.MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=options.block_size,
        is_symmetric=options.symmetric,
        accuracy_level=options.accuracy_level or None,
        nodes_to_exclude=exclude,
        op_types_to_quantize=ops,
        algo_config=algo,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # HQQ's torch.from_numpy
        quantizer.process()
    model = quantizer.model.model
    if options.accuracy_level and algo is not None:  # ORT's HQQ quantizer writes none: set it as asked
        from onnx import helper

        for node in model.graph.node:
            if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
                node.attribute.append(helper.make_attribute("accuracy_level", options.accuracy_level))
    return model


def weight_only(ctx: CompileContext, src: Path, dest: Path, bits: int) -> dict[str, Any]:
    """Write the ``bits`` (4 or 8) MatMulNBits version of ``src`` to ``dest``; returns manifest
    info. At 8 bits every MatMul with a stored weight, the head included, is 8-bit and the
    embeddings stay fp32 (``lm_head`` and ``embeddings`` are int4's)."""
    import onnx

    options: ORTOptions = ctx.options
    source_blocks = bits == 4 and options.blocks != "quantizer"
    source_blocks &= not any(k in options.model_fields_set for k in QUANTIZER_INT4)
    if bits == 4 and options.embeddings is None:  # (model_copy marks it set: decided above)
        options = options.model_copy(update={"embeddings": options.embeddings_for(ctx.export.signature.generative)})
    # The graph alone is loaded: each weight is read from the source's external data file when
    # its node is quantized (the quantizers resolve a tensor's file against the working folder),
    # so the float weights are never all in memory at once.
    model = onnx.load(str(src), load_external_data=False)
    with beside(src):
        _name_nodes(model.graph)
        prepared = _prepare(model.graph)
        before = _inventory(model.graph)
        heads = lm_heads(model.graph)
        others = [name for name in before if name not in heads]
        source = _source_blocks(model, options, heads, required=options.blocks == "source") if source_blocks else None
        if source is None:
            model = _quantized(model, options, bits, heads, others)
        onnx.load_external_data_for_model(model, ".")  # what stayed float, into the graph
    save_onnx(model, dest)
    if source is not None:
        return source
    record = {**_record(model.graph, before, heads, options, bits), **prepared}
    if not record["matmul_nbits"]:
        return {
            "execution_precision": "fp32 (no MatMul had a stored 2-D weight to quantize)",
            "quantization": record,
            "notes": [
                f"{ctx.target.key}: nothing quantized ({len(before)} MatMul/Gemm, "
                f"{record['activation_matmuls']} of two activations); the artifact is fp32"
            ],
        }
    return {
        "execution_precision": f"int{bits} weights, {record['compute']} compute",
        "quantization": record,
        "notes": [_note(record, options, bits)],
    }


def _quantized(model: Any, options: ORTOptions, bits: int, heads: list[str], others: list[str]) -> Any:
    """The MatMulNBitsQuantizer passes of a weight-only build: all MatMuls at 8 bits, or int4
    with the head excluded (then int8 when ``lm_head`` says so) and the embeddings as asked."""
    with _quiet_import() as module:
        if bits == 8:
            return _run(module, model, options, 8, [], ("MatMul",))
        fitted = options.algorithm != "rtn"  # HQQ fits MatMul weights only
        ops = ("MatMul", "Gather") if options.embeddings == "int4" and not fitted else ("MatMul",)
        model = _run(module, model, options, 4, heads if options.lm_head != "int4" else [], ops)
        if options.embeddings == "int4" and fitted:  # the table: RTN GatherBlockQuantized, a pass of its own
            model = _run(module, model, options.model_copy(update={"algorithm": "rtn"}), 4, [], ("Gather",))
        if options.lm_head == "int8" and heads:
            model = _run(module, model, options, 8, others, ("MatMul",))
    return model


def _source_blocks(model: Any, options: ORTOptions, heads: list[str], required: bool) -> dict[str, Any] | None:
    """The file's own blocks as MatMulNBits (:mod:`kiln.targets.onnxruntime.blocks`) when every
    MatMul weight and table lies on a GGUF grid (``required``: else refuse); ``None``: the quantizer."""
    found = blocks.plan(model.graph)
    if not found.complete:
        if not required:
            return None
        shown = ", ".join(list(found.off)[:4]) + (", ..." if len(found.off) > 4 else "")
        raise TargetBuildError(
            f"options.blocks = 'source': {len(found.off) or 'all'} weights lie on no GGUF grid (Q4_0, Q4_1, Q8_0)"
            f"{': ' + shown if shown else ''}; the source was not dequantized from such a file: set "
            "options.blocks = 'quantizer' (or 'auto')"
        )
    miss, kinds = found.miss, found.kinds()
    counts = blocks.rewrite(model, found, options.accuracy_level)
    record = {
        "tool": "kiln (the source's own blocks)",
        "format": "MatMulNBits (com.microsoft)",
        "blocks": kinds,
        "block_size": BLOCK,
        "largest_miss_steps": miss,
        "accuracy_level": options.accuracy_level,
        "compute": COMPUTE[options.accuracy_level],
        "matmul_nbits": {k: v for k, v in counts.items() if k.startswith("int") and v},
        "lm_head": {"policy": "the file's blocks", "nodes": heads},
        "embeddings": f"the file's blocks: {counts['tables']} Gather of blocks and scales, dequantized after the lookup"
        if counts["tables"]
        else "none",
        "left_float": {},
    }
    shown = ", ".join(f"{n} {kind.upper()}" for kind, n in kinds.items())
    note = (
        f"int4 in the source's own blocks ({shown}, blocks of {BLOCK}): the weights lie on the grid of the file "
        "they were dequantized from and are written back as MatMulNBits, not re-quantized"
    )
    return {
        "execution_precision": f"int4 weights, {record['compute']} compute",
        "quantization": record,
        "notes": [note],
    }


def _record(graph: Any, before: dict[str, Any], heads: list[str], options: ORTOptions, bits: int) -> dict[str, Any]:
    """What became what: MatMulNBits by bits, what was left float and why, the head and embeddings."""
    algorithm = ALGORITHMS[options.algorithm] if bits == 4 else "RTN"
    nbits: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":  # the head may be 8-bit in an int4 build: its own name
            width = next(a.i for a in node.attribute if a.name == "bits")
            nbits[f"int{width}"] = nbits.get(f"int{width}", 0) + 1
    still = {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")}
    left, padded = {}, []
    for name, weight in before.items():
        if weight is None:
            continue
        if name in still:
            left[name] = _why_float(name, weight, heads, options, graph)
        elif isinstance(weight, list) and weight[-2] % options.block_size:
            padded.append(f"{name} (K={weight[-2]})")
    gathers = sum(n.op_type == "GatherBlockQuantized" for n in graph.node)
    return {
        "tool": f"{QUANTIZER}.MatMulNBitsQuantizer ({algorithm}, QOperator)",
        "format": "MatMulNBits (com.microsoft)",
        "weights": f"int{bits} {'symmetric' if options.symmetric and algorithm == 'RTN' else 'asymmetric'}, "
        f"blocks of {options.block_size} along K",
        "accuracy_level": options.accuracy_level,
        "compute": COMPUTE[options.accuracy_level],
        "matmul_nbits": nbits,
        "lm_head": {"policy": options.lm_head if bits == 4 else "int8", "nodes": heads},
        "embeddings": f"int4 GatherBlockQuantized (RTN{'' if algorithm == 'RTN' else f': {algorithm} fits MatMul weights only'})"
        if gathers
        else "fp32 (Gather kept float: a lookup)",
        "left_float": left,
        "padded_last_block": padded,
        "activation_matmuls": sum(w is None for w in before.values()),
    }


def _why_float(name: str, weight: Any, heads: list[str], options: ORTOptions, graph: Any) -> str:
    op = next(n.op_type for n in graph.node if n.name == name)
    if name in heads and options.lm_head == "fp32":
        return "lm head: options.lm_head = 'fp32'"
    if op == "Gemm":
        return "Gemm with transA, alpha or beta set: not rewritten to MatMul"
    if isinstance(weight, str):
        return weight
    if len(weight) != 2:
        return f"{len(weight)}-D weight {weight}: the quantizer takes 2-D weights only"
    return "not quantized by ORT (see --verbose)"


def _note(record: dict[str, Any], options: ORTOptions, bits: int) -> str:
    nbits = record["matmul_nbits"]
    int8_count = nbits.get("int8", 0)
    count = nbits.get(f"int{bits}", 0)
    parts = [f"int{bits}: {count} MatMul(s) as int{bits} MatMulNBits (block {options.block_size})"]
    if record["lm_head"]["nodes"]:
        head = record["lm_head"]["policy"]
        parts.append(f"lm head {head}" + (" MatMulNBits" if int8_count and head != "fp32" else ""))
    parts.append(f"embeddings {'int4' if record['embeddings'].startswith('int4') else 'fp32'}")
    if record["left_float"]:
        parts.append(
            f"{len(record['left_float'])} left float ({'; '.join(sorted(set(record['left_float'].values())))})"
        )
    if record["padded_last_block"]:
        parts.append(f"{len(record['padded_last_block'])} with K not a multiple of the block (last block padded)")
    if record["lm_head"]["policy"] == "int8" and options.accuracy_level < 4 and int8_count:
        parts.append("int8 MatMulNBits below accuracy level 4 was measured ~7x slower than fp32")
    return ", ".join(parts)
