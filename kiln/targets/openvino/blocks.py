"""OpenVINO int4 in the source's own blocks (:mod:`kiln.quant.blocks` finds them): a model
dequantized from a 4-bit GGUF file, compressed back into the very blocks it came from.

Re-quantizing such weights with NNCF's integer zero points (or any other grid) moves every one of
them, and on SmolLM2-135M no setting of NNCF's passed the int4 gate short of mostly-int8 layers.
Written back, the blocks reproduce the reference to f32 rounding, at the file's size.

In the IR each weight becomes the decompression subgraph OpenVINO's CPU plugin runs as a
compressed FullyConnected (or Gather): ``Constant(u4 | u8) -> Convert(f32) -> Subtract(zero
point) -> Multiply(scale) -> Reshape``. ``Q4_1``'s minimum is a float, so its zero point
(``-m / d``, in units of ``q``) is computed in the graph from the file's fp16 ``m`` and ``d`` (the
IR holds the file's 5 bits a weight; the plugin folds the division into f32 zero points when it
compiles). Float zero points take the plugin's slower int4 path: about 1.8x an integer zero
point's time per layer here, still 2-2.5x faster than f32 weights (the decode figures are in
``examples/smollm2``).

Why: the plugin quantizes a compressed layer's activations to int8 at run time (its VNNI kernel,
``DYNAMIC_QUANTIZATION_GROUP_SIZE``, 32 by default) only when the weights' zero point is an
integer type or absent (openvino 2026.4, ``useDynamicQuantizationImpl`` of the CPU plugin's
FullyConnected); a float zero point keeps f32 activations and weights decompressed to f32.
``activations = "int8"`` (:func:`apply`) therefore writes every block centred and signed, with no
zero point: ``q4_0`` as ``i4`` ``q - 8``, ``q8_0`` as ``i8``, and ``q4_1`` (``W = q * d + m``) as
``i4`` ``(q - 8) * d`` plus ``blocksum(x) @ (m + 8 * d).T`` (:func:`split_minimum`): the same
numbers in arithmetic, the activations then int8 in groups of 32 as llama.cpp's ``Q8_1`` are.
``"float"`` (the default) keeps the exact float path above. Measured on SmolLM2-135M (2 threads,
one run beside llama.cpp): the int4 layers' time fell from 6.2 to 4.2 ms a step, but the block-sum
products, their Adds and ReduceSums took 1.4 ms back: decode 97.0 against 98.3 tok/s, TTFT 36.7
against 46.2 ms, teacher-forced top-1 0.930 against 1.000.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.quant.blocks import BLOCK, Fitted, Grid, fit

__all__ = ["ACTIVATIONS", "BLOCK", "Plan", "Site", "apply", "decompressed", "plan", "sites", "split_minimum"]

ACTIVATIONS = ("int8", "float")


@dataclass(frozen=True)
class Site:
    """A weight input to rewrite: the op reading it, the port, and its [out, in] orientation."""

    op: Any
    port: int
    constant: Any
    transposed: bool  # True: the constant is [in, out] (a MatMul without transpose_b)


def sites(model: Any) -> list[Site]:
    """Every MatMul weight and embedding table that is a float constant (behind at most a
    Convert), in graph order."""
    found = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "MatMul":
            attrs = op.get_attributes()
            if attrs.get("transpose_a"):
                continue
            port, transposed = 1, not attrs.get("transpose_b")
        elif kind == "Gather":
            port, transposed = 0, False
        else:
            continue
        const = _float_constant(op.input_value(port))
        if const is not None and len(const.get_output_shape(0)) == 2:
            found.append(Site(op, port, const, transposed))
    return found


def _float_constant(output: Any) -> Any:
    node = output.get_node()
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        return None
    return node if node.get_output_element_type(0).get_type_name() in ("f32", "f16", "bf16") else None


@dataclass
class Plan(Fitted):
    """What :func:`plan` found: grids by weight constant (its friendly name), and where each
    weight is read."""

    sites: list[Site] = field(default_factory=list)


def plan(model: Any) -> Plan:
    """Each weight constant's grid, read from its values once (a constant read by the head and the
    embedding is fitted once)."""
    grids: dict[str, Grid] = {}
    off: dict[str, int] = {}
    seen: set[str] = set()
    found = sites(model)
    for site in found:
        name = site.constant.get_friendly_name()
        if name in seen:
            continue
        seen.add(name)
        weight = site.constant.get_data().astype(np.float32, copy=False)
        grid = fit(weight.T if site.transposed else weight)
        if grid is None:
            off[name] = int(weight.size)
        else:
            grids[name] = grid
    return Plan(grids, off, found)


def _packed(grid: Grid, name: str) -> Any:
    """The weights' constant, copied into the graph (a Constant made from a Tensor shares the
    Tensor's memory by default, and the packed array is a temporary)."""
    import openvino as ov

    if grid.bits == 8:
        tensor = ov.Tensor(grid.q)
    else:  # two 4-bit values a byte, the first in the low nibble
        flat = grid.q.reshape(-1)
        tensor = ov.Tensor((flat[0::2] | (flat[1::2] << 4)).astype(np.uint8), list(grid.q.shape), ov.Type.u4)
    constant = ov.op.Constant(tensor, shared_memory=False)
    constant.set_friendly_name(name)
    return constant


def _signed(grid: Grid, name: str) -> Any:
    """The blocks centred on the grid's integer midpoint (8, or 128 for ``q8_0``) as ``i4`` / ``i8``:
    no zero point for the plugin to refuse."""
    import openvino as ov

    centred = grid.q.astype(np.int16) - (128 if grid.bits == 8 else 8)
    if grid.bits == 8:
        tensor = ov.Tensor(centred.astype(np.int8))
    else:  # two's-complement nibbles, the first in the low nibble
        flat = (centred.reshape(-1) & 0xF).astype(np.uint8)
        tensor = ov.Tensor((flat[0::2] | (flat[1::2] << 4)).astype(np.uint8), list(grid.q.shape), ov.Type.i4)
    constant = ov.op.Constant(tensor, shared_memory=False)
    constant.set_friendly_name(name)
    return constant


def decompressed(grid: Grid, name: str, gathered: bool = False) -> Any:
    """The subgraph that turns the blocks back into the [out, in] f32 weight. A table a Gather
    reads gets its float zero points as one f32 constant: the CPU plugin's Gather compression
    (2026.4) needs a constant there and throws on the division."""
    import openvino as ov
    from openvino import opset13 as ops

    weight = _packed(grid, name)
    value = ops.convert(weight, ov.Type.f32)
    scale = ops.convert(ops.constant(grid.scale, name=f"{name}/scale"), ov.Type.f32)
    if grid.low is None or gathered:
        zero = ops.constant(np.asarray(grid.zero, dtype=np.float32), name=f"{name}/zero_point")
    else:  # the file's fp16 minimum, kept as it was: the plugin folds -low / scale into f32 zero points
        negated = ops.convert(ops.constant(-grid.low, name=f"{name}/minimum"), ov.Type.f32)
        zero = ops.divide(negated, scale)
    value = ops.subtract(value, zero)
    value = ops.multiply(value, scale)
    rows = grid.q.shape[0]
    return ops.reshape(value, ops.constant(np.array([rows, -1], dtype=np.int64)), False)


def centred(grid: Grid, name: str) -> Any:
    """``(q - midpoint) * d`` as the [out, in] f32 weight, from signed blocks with no zero point."""
    import openvino as ov
    from openvino import opset13 as ops

    value = ops.convert(_signed(grid, name), ov.Type.f32)
    value = ops.multiply(value, ops.convert(ops.constant(grid.scale, name=f"{name}/scale"), ov.Type.f32))
    return ops.reshape(value, ops.constant(np.array([grid.q.shape[0], -1], dtype=np.int64)), False)


def block_sums(x: Any, blocks_in: int) -> Any:
    """``x [..., in]`` summed over each block of 32 inputs: ``[..., in / 32]``."""
    from openvino import opset13 as ops

    rank = x.get_partial_shape().rank.get_length()
    lead = ops.gather(
        ops.shape_of(x, "i64"), ops.constant(np.arange(rank - 1, dtype=np.int64)), ops.constant(np.int64(0))
    )
    shape = ops.concat([lead, ops.constant(np.array([blocks_in, BLOCK], np.int64))], 0)
    return ops.reduce_sum(ops.reshape(x, shape, False), ops.constant(np.array([-1], np.int64)), False)


def split_minimum(x: Any, grid: Grid, name: str, sums: Any) -> Any:
    """``x @ W.T`` for a ``q4_1`` weight ``W = q * d + m``, its minimum out of the product:
    ``x @ ((q - 8) * d).T`` (signed blocks, no zero point: the plugin's int8-activation kernel) plus
    ``blocksum(x) @ (m + 8 * d).T`` (a [in / 32, out] f32 product; ``sums`` is ``blocksum(x)``,
    shared by the layers reading the same input). The offset is computed in the graph from the
    file's fp16 ``m`` and ``d`` and folded by the plugin at compile time."""
    from openvino import opset13 as ops

    assert grid.low is not None
    main = ops.matmul(x, centred(grid, name), False, True)
    rows, blocks_in = grid.q.shape[0], grid.q.shape[1]
    low = ops.convert(ops.constant(grid.low.reshape(rows, blocks_in), name=f"{name}/minimum"), "f32")
    step = ops.convert(ops.constant(grid.scale.reshape(rows, blocks_in), name=f"{name}/step"), "f32")
    offset = ops.add(low, ops.multiply(step, ops.constant(np.float32(8.0))))
    return ops.add(main, ops.matmul(sums, offset, False, True))


def apply(model: Any, found: Plan, activations: str = "float") -> int:
    """Rewrite every weight on a grid into its blocks; the number of ops rewritten.
    ``activations``: ``"int8"`` writes the MatMuls' blocks signed with no zero point, so the CPU
    plugin quantizes their activations to int8 at run time; ``"float"`` keeps the float path
    (f32 activations: the reference to f32 rounding)."""
    from openvino import opset13 as ops

    signed = activations == "int8"
    built: dict[str, Any] = {}
    sums: dict[tuple[Any, int], Any] = {}  # blocksum of each input read by a q4_1 layer, shared
    gathered = {site.constant.get_friendly_name() for site in found.sites if site.op.get_type_name() == "Gather"}
    rewritten = 0
    for site in found.sites:
        name = site.constant.get_friendly_name()
        grid = found.grids.get(name)
        if grid is None:
            continue
        # a table read by the head and the embedding lookup is one constant for both
        key_w = f"{name}/signed" if signed and grid.low is None else name
        if site.op.get_type_name() == "Gather":
            if key_w not in built:
                built[key_w] = centred(grid, name) if key_w != name else decompressed(grid, name, True)
            site.op.input(0).replace_source_output(built[key_w].output(0))
            rewritten += 1
            continue
        x = site.op.input_value(0)
        if signed and grid.low is not None:
            key = (x.get_node(), x.get_index())
            if key not in sums:
                sums[key] = block_sums(x, grid.q.shape[1])
            replacement = split_minimum(x, grid, name, sums[key])
        else:
            if key_w not in built:
                built[key_w] = centred(grid, name) if key_w != name else decompressed(grid, name, name in gathered)
            # the blocks are [out, in]: the MatMul reads them transposed
            replacement = ops.matmul(x, built[key_w], False, True)
        replacement.set_friendly_name(site.op.get_friendly_name())
        site.op.output(0).replace(replacement.output(0))
        rewritten += 1
    return rewritten
