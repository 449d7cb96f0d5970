"""ONNX Runtime int4 in the source's own blocks (:mod:`kiln.quant.blocks` finds them): a model
dequantized from a GGUF file, its MatMuls written as ``MatMulNBits`` over the file's own blocks.

- ``Q4_0`` and ``Q8_0``: ``MatMulNBits`` (4 and 8 bits, blocks of 32) with the file's ``q`` and
  ``d``; their zero points (8 and 128) are MatMulNBits' defaults, so none is stored.
- ``Q4_1`` (``q * d + m``, ``m`` a float): MatMulNBits takes float zero points, but ONNX Runtime
  1.31 runs them on a path about 35x slower than integer ones (30 SmolLM2-sized layers: 200 ms
  against 6 ms here; SmolLM2's HQQ artifact decoded at 0.72x eager). So the minimum is taken out
  of the product: ``x @ (q * d + m)^T = MatMulNBits(x, q, d) + blocksum(x) @ (m + 8 d)^T``, where
  MatMulNBits takes its default zero point 8 (``(q - 8) * d``, centred like the weight itself),
  ``blocksum`` adds each run of 32 inputs (a ReduceSum over a reshape, shared by every layer
  reading the same input) and ``(m + 8 d)^T`` is a [K / 32, N] fp32 matrix: a thirty-second of the
  weight's compute, exact in arithmetic. With zero point 0 instead (``q * d`` and ``m``), both
  terms are large and of opposite sign, and at accuracy level 4 the int8 rounding of the
  activations in the first no longer cancels against the exact second: SmolLM2 answered "What is
  the capital of France?" with "L'Étoile, la femme, la femme, ..." though its teacher-forced top-1
  read 0.938.
- Embedding tables: a ``Gather`` of the blocks and their scales, dequantized after the lookup
  (``Cast``, ``Mul``, ``Add``); a table tied to the LM head reads the head's own ``MatMulNBits``
  bytes, so the file's tied weight is stored once.

At ``accuracy_level`` 4 (the default) MatMulNBits quantizes its activations to int8 per block at
run time, so the artifact is close to the reference rather than equal to it; level 1 computes in
fp32 and reproduces it, slower.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.quant.blocks import BLOCK, Fitted, Grid, fit

DOMAIN = "com.microsoft"


class Plan(Fitted):
    """The grid of each weight initializer read by a MatMul (as [out, in]) or a Gather (the
    table, [vocab, width])."""


def _weights(graph: Any) -> tuple[dict[str, Any], list[Any], list[Any]]:
    inits = {i.name: i for i in graph.initializer}
    matmuls = [
        n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    ]
    gathers = [
        n
        for n in graph.node
        if n.op_type == "Gather"
        and n.input[0] in inits
        and len(inits[n.input[0]].dims) == 2
        and all(a.i == 0 for a in n.attribute if a.name == "axis")
    ]
    return inits, matmuls, gathers


def plan(graph: Any) -> Plan:
    """Every MatMul weight and embedding table, fitted once each."""
    from onnx import numpy_helper

    inits, matmuls, gathers = _weights(graph)
    found = Plan()
    wanted = [(n.input[1], True) for n in matmuls] + [(n.input[0], False) for n in gathers]
    for name, transposed in dict(wanted).items():
        weight = numpy_helper.to_array(inits[name])
        grid = fit(weight.T if transposed else weight)  # a MatMul's weight is [in, out]
        if grid is None:
            found.off[name] = int(weight.size)
        else:
            found.grids[name] = grid
    return found


class _Writer:
    """Builds the replacement nodes and initializers, sharing what layers have in common."""

    def __init__(self, accuracy_level: int) -> None:
        self.level = accuracy_level
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.packed: dict[int, str] = {}  # id of a shared Grid -> its MatMulNBits bytes
        self.blocksums: dict[tuple[str, int], str] = {}
        self.count = 0

    def _name(self, stem: str) -> str:
        self.count += 1
        return f"kiln_blocks/{stem}_{self.count}"

    def _init(self, value: np.ndarray, stem: str) -> str:
        from onnx import numpy_helper

        name = self._name(stem)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def _node(self, op: str, inputs: list[str], stem: str, domain: str = "", **attrs: Any) -> str:
        from onnx import helper

        out = self._name(stem)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def bytes_of(self, grid: Grid) -> str:
        """MatMulNBits' B: [N, K / 32, 32 * bits / 8] uint8, two 4-bit values a byte (low first)."""
        if id(grid) not in self.packed:
            q = grid.q if grid.bits == 8 else (grid.q[..., 0::2] | (grid.q[..., 1::2] << 4)).astype(np.uint8)
            self.packed[id(grid)] = self._init(np.ascontiguousarray(q), "q")
        return self.packed[id(grid)]

    def blocksum(self, x: str, blocks: int) -> str:
        """Each run of 32 inputs added: [..., K] -> [..., K / 32]; once per input."""
        key = (x, blocks)
        if key not in self.blocksums:
            head = self._node(
                "Slice",
                [
                    self._node("Shape", [x], "shape"),
                    self._init(np.array([0]), "zero"),
                    self._init(np.array([-1]), "last"),
                ],
                "lead",
            )
            shape = self._node("Concat", [head, self._init(np.array([blocks, BLOCK]), "blocks")], "split", axis=0)
            split = self._node("Reshape", [x, shape], "runs")
            self.blocksums[key] = self._node(
                "ReduceSum", [split, self._init(np.array([-1]), "axis")], "blocksum", keepdims=0
            )
        return self.blocksums[key]

    def matmul(self, node: Any, grid: Grid) -> None:
        from onnx import helper

        rows, blocks = grid.q.shape[0], grid.q.shape[1]
        inputs = [node.input[0], self.bytes_of(grid), self._init(grid.scale.astype(np.float32).reshape(-1), "scale")]
        low = grid.kind == "q4_1"
        attrs = {"K": blocks * BLOCK, "N": rows, "bits": grid.bits, "block_size": BLOCK, "accuracy_level": self.level}
        product = node.output[0] if not low else self._name("product")
        self.nodes.append(helper.make_node("MatMulNBits", inputs, [product], name=node.name, domain=DOMAIN, **attrs))
        if low:
            assert grid.low is not None
            # (q - 8) d + (m + 8 d): MatMulNBits' default zero point, the rest per block here
            rest = grid.low[..., 0].astype(np.float32) + 8 * grid.scale[..., 0].astype(np.float32)
            minimum = self._init(np.ascontiguousarray(rest.T), "minimum")
            offset = self._node("MatMul", [self.blocksum(node.input[0], blocks), minimum], "offset")
            self.nodes.append(helper.make_node("Add", [product, offset], [node.output[0]], name=self._name("add")))

    def gather(self, node: Any, grid: Grid) -> None:
        """The lookup of the blocks and their scale and offset, then ``q * scale + offset``."""
        from onnx import helper

        blocks = grid.q.shape[1]
        ids = node.input[1]
        # 8 bits: [V, D / 32, 32], the tied head's bytes when it has them; a 4-bit table is
        # unpacked to a byte a value (a Gather reads whole bytes)
        table = self.bytes_of(grid) if grid.bits == 8 else self._init(np.ascontiguousarray(grid.q), "table")
        scale = grid.scale.astype(np.float32)
        offset = -np.asarray(grid.zero, dtype=np.float32) * scale
        values = self._node("Cast", [self._node("Gather", [table, ids], "rows", axis=0)], "values", to=1)
        scaled = self._node(
            "Mul", [values, self._node("Gather", [self._init(scale, "row_scale"), ids], "scales", axis=0)], "scaled"
        )
        shifted = self._node(
            "Add",
            [
                scaled,
                self._node(
                    "Gather",
                    [self._init(np.broadcast_to(offset, scale.shape).copy(), "row_offset"), ids],
                    "offsets",
                    axis=0,
                ),
            ],
            "shifted",
        )
        shape = self._node(
            "Concat",
            [self._node("Shape", [ids], "ids_shape"), self._init(np.array([blocks * BLOCK]), "width")],
            "shape",
            axis=0,
        )
        self.nodes.append(helper.make_node("Reshape", [shifted, shape], [node.output[0]], name=node.name))


def rewrite(model: Any, found: Plan, accuracy_level: int) -> dict[str, int]:
    """Replace every MatMul and Gather on a grid in ``model`` (in place, in graph order); returns
    how many MatMulNBits of each width were written and how many tables."""
    from onnx import helper

    graph = model.graph
    _, matmuls, gathers = _weights(graph)
    # A table tied to the head (the head reads a transposed copy): one Grid for both, so the
    # head's MatMulNBits bytes serve the lookup too.
    for table in {n.input[0] for n in gathers}:
        grid = found.grids[table]
        for weight in {n.input[1] for n in matmuls}:
            theirs = found.grids[weight]
            if (
                theirs.kind == grid.kind
                and np.array_equal(theirs.q, grid.q)
                and np.array_equal(theirs.scale, grid.scale)
            ):
                found.grids[table] = theirs
                break
    writer = _Writer(accuracy_level)
    replaced = {id(n) for n in matmuls + gathers}
    counts = {"int4": 0, "int8": 0, "tables": 0}
    old = list(graph.node)
    del graph.node[:]
    for node in old:
        if id(node) not in replaced:
            graph.node.append(node)
            continue
        before = len(writer.nodes)
        if node.op_type == "MatMul":
            writer.matmul(node, found.grids[node.input[1]])
            counts[f"int{found.grids[node.input[1]].bits}"] += 1
        else:
            writer.gather(node, found.grids[node.input[0]])
            counts["tables"] += 1
        graph.node.extend(writer.nodes[before:])
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + writer.inits)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return counts
