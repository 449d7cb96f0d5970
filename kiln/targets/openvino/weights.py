"""What ``nncf.compress_weights`` really did, read back from the compressed graph.

Every weight of a MatMul or an embedding Gather is traced back to its constant: an integer
constant behind ``Convert`` -> (``Subtract`` zero point) -> ``Multiply`` scale is a compressed
weight (``u4``/``i4``: int4 asym/sym, ``u8``/``i8``: int8), a float constant is a weight left in
float. The scale's shape tells the group: the axis where the scale is 1 and the weight is not is
the reduction (input-channel) axis, split into groups when the weight has one axis more than
its layer. This is the bit-width distribution NNCF logs (by layers and by weights), and the
per-layer facts behind it: which layers NNCF gave a smaller group or the backup mode because the
group size does not divide their input width.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INT = {"u4": ("int4", "asym"), "i4": ("int4", "sym"), "u8": ("int8", "asym"), "i8": ("int8", "sym")}
PASS = ("Convert", "Reshape", "Transpose", "Unsqueeze")


SCOPES = "pkg.torch.onnx.name_scopes"  # the module path torch's ONNX exporter records per node


def onnx_weight_names(path: Path, strip: str = "") -> dict[str, str]:
    """ONNX initializer name -> ``<module path>.weight``, from the exporter's name scopes: a
    Linear's weight is stored transposed under a generated name (``val_28``); the MatMul that
    reads it knows its module (``model.layers.0.self_attn.q_proj``)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == SCOPES), None)
        if node.op_type not in ("MatMul", "Gemm", "Gather") or scopes is None:
            continue
        module = ast.literal_eval(scopes)[-2:-1]  # the last entry is the op itself
        for name in node.input:
            if name in initializers and module:
                readers.setdefault(name, []).append(module[0].removeprefix(strip))
    return {name: f"{mods[0]}.weight" for name, mods in readers.items() if len(set(mods)) == 1 and mods[0]}


def name_weights(model: Any, path: Path, strip: str = "") -> None:
    """Name the IR's weight constants by their modules, so NNCF's per-layer records read like
    the model (names that are already module paths keep them, ``strip`` removed)."""
    names = onnx_weight_names(path, strip)
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            name = op.get_friendly_name()
            if name in names:
                op.set_friendly_name(names[name])
            elif strip and name.startswith(strip) and name.endswith(".weight"):
                op.set_friendly_name(name.removeprefix(strip))


def name_program_weights(model: Any, program: Any, strip: str = "") -> None:
    """The same for an IR converted from a torch.export program: OpenVINO's torch frontend names
    each weight's tensor after its state-dict key with dots as underscores
    (``model_model_layers_0_mlp_up_proj_weight``)."""
    keys = {key.replace(".", "_"): key for key in program.state_dict}
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        for tensor in op.output(0).get_names():
            key = keys.get(tensor.split(":", 1)[0])
            if key is not None:
                op.set_friendly_name(key.removeprefix(strip))
                break


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # "matmul" | "embedding"
    bits: str  # "int4" | "int8" | "float" | another NNCF format
    scheme: str  # "asym" | "sym" | "" (float)
    group: int | None  # elements per group; -1: per channel; None: float
    width: int  # the reduction (input) width
    weights: int

    @property
    def format(self) -> str:
        if self.bits == "float":
            return "float"
        return f"{self.bits}_{self.scheme}, " + ("per-channel" if self.group == -1 else f"group {self.group}")


def _constant(output: Any, depth: int = 0) -> tuple[Any, Any] | None:
    """The constant a weight input comes from, and the Multiply that scales it (if compressed)."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return node, None
    if depth > 6:
        return None
    if kind in PASS:
        return _constant(node.input_value(0), depth + 1)
    if kind in ("Multiply", "Subtract"):
        found = _constant(node.input_value(0), depth + 1)
        if found is not None and kind == "Multiply" and found[1] is None:
            return found[0], node
        return found
    return None


def _scale_shape(multiply: Any) -> list[int] | None:
    found = _constant(multiply.input_value(1))
    return list(found[0].get_output_shape(0)) if found is not None else None


def _layer(op: Any, port: int, kind: str) -> Layer | None:
    found = _constant(op.input_value(port))
    if found is None:
        return None
    const, multiply = found
    shape = list(const.get_output_shape(0))
    element = const.get_output_element_type(0).get_type_name()
    name = const.get_friendly_name().removesuffix(".weight")
    weights = math.prod(shape)
    if element in INT and multiply is not None:
        bits, scheme = INT[element]
        scale = _scale_shape(multiply) or [1] * len(shape)
        axes = [i for i, (w, s) in enumerate(zip(shape, scale, strict=False)) if s == 1 and w > 1]
        axis = axes[0] if axes else len(shape) - 1
        if len(shape) == 3:  # grouped: [groups, group, out] or [out, groups, group]
            group = shape[axis]
            width = group * (shape[axis - 1] if axis > 0 else 1)
            return Layer(name, kind, bits, scheme, group, width, weights)
        return Layer(name, kind, bits, scheme, -1, shape[axis], weights)
    if element not in ("f32", "f16", "bf16") or len(shape) != 2:
        return None  # a format kiln does not ask NNCF for, or a constant that is no weight
    # An embedding table is [vocab, width]; a MatMul weight [out, in] with transpose_b, else [in, out].
    transposed = kind == "embedding" or op.get_attributes().get("transpose_b")
    width = shape[1] if transposed else shape[0]
    return Layer(name, kind, "float", "", None, width, weights)


def layers(model: Any) -> list[Layer]:
    """Every weight-carrying MatMul and embedding of the model, in graph order."""
    found = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "MatMul":
            layer = _layer(op, 1, "matmul") or _layer(op, 0, "matmul")
        elif kind == "Gather":
            layer = _layer(op, 0, "embedding")
        else:
            continue
        if layer is not None and layer.weights > 1:
            found.append(layer)
    return found


def distribution(found: list[Layer]) -> dict[str, dict[str, Any]]:
    """By format: layers, weights and their share of all weights (NNCF's bit-width table)."""
    total = sum(layer.weights for layer in found) or 1
    table: dict[str, dict[str, Any]] = {}
    for layer in found:
        row = table.setdefault(layer.format, {"layers": 0, "weights": 0})
        row["layers"] += 1
        row["weights"] += layer.weights
    for row in table.values():
        row["share"] = round(row["weights"] / total, 4)
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["weights"]))


def bit_widths(found: list[Layer]) -> dict[str, int]:
    """Weights (elements) at each bit width: int4, int8, float."""
    counts: dict[str, int] = {}
    for layer in found:
        counts[layer.bits] = counts.get(layer.bits, 0) + layer.weights
    return counts
