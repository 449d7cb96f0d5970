"""The input spec: named dims with min/opt/max, translated for each backend.

One spec, many spellings: ``torch.export`` ``Dim`` objects, ONNX dim names, OpenVINO
``PartialShape`` ranges, TensorRT optimization profiles and Core ML ``RangeDim`` are all derived
from :class:`Signature` here or in the target that needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, field_validator

from kiln.config import DimSpec, InputSpec

Point = Literal["min", "opt", "max"]
# A shape entry naming a sum of dims: ``past+sequence``.
SUM = "+"

# Inputs or outputs of one request, keyed by the signature's names: what every runner speaks.
Arrays = dict[str, np.ndarray]

NUMPY_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
}


@dataclass(frozen=True)
class CacheSpec:
    """The KV cache of a decoder LM's step graph: ``input_ids``, ``attention_mask`` ``[batch,
    past + sequence]`` (where :attr:`attention_mask` says so) and ``position_ids`` ``[batch,
    sequence]``, then ``past.<i>.key|value`` ``[batch, kv_heads, past, head_dim]`` in; ``logits``
    ``[batch, sequence, vocab]``, then ``present.<i>.key|value`` (past + sequence long) out.
    One graph serves prefill (past = 0) and decode (sequence = 1)."""

    layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int  # the model's own limit (position embeddings)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    dtype: str = "float32"
    # ``attention_mask`` ``[batch, past + sequence]`` (1 for a token, 0 for padding) after the ids:
    # what batched runtimes feed (rows of different lengths, left-padded). Off for step graphs
    # captured before it existed and for a factory's own step module without it.
    attention_mask: bool = False

    @property
    def past_names(self) -> list[str]:
        return [f"past.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [f"present.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Signature:
    """Inputs (in call order) with their dims, and the model's output names once known."""

    inputs: tuple[InputSpec, ...]
    dims: dict[str, DimSpec]
    outputs: tuple[str, ...] = field(default=())
    cache: CacheSpec | None = None  # set for a causal LM's step graph

    @property
    def generative(self) -> bool:
        return self.cache is not None

    def context_length(self) -> int:
        """The most tokens one sequence can hold: the cache's range plus one step, within the
        model's own position limit."""
        assert self.cache is not None
        return min(self.dims["past"].max + 1, self.cache.max_positions)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    def dim(self, name: str) -> DimSpec:
        """A named dim, or a sum of them (``past+sequence``: an attention mask's length)."""
        if SUM not in name:
            return self.dims[name]
        parts = [self.dims[part] for part in name.split(SUM)]
        return DimSpec(
            min=sum(p.min for p in parts), opt=sum(p.best for p in parts), max=max(1, sum(p.max for p in parts))
        )

    def size(self, dim: str, point: Point, sizes: dict[str, int] | None = None) -> int:
        """The dim's size at ``point``, or as ``sizes`` give it (a sum from its parts' sizes)."""
        given = sizes or {}
        if dim in given:
            return given[dim]
        if SUM in dim:
            return sum(self.size(part, point, given) for part in dim.split(SUM))
        spec = self.dims[dim]
        return {"min": spec.min, "opt": spec.best, "max": spec.max}[point]

    def shape(self, spec: InputSpec, point: Point, overrides: dict[str, int] | None = None) -> tuple[int, ...]:
        return tuple(s if isinstance(s, int) else self.size(s, point, overrides) for s in spec.shape)

    def fits(self, spec: InputSpec, shape: tuple[int, ...]) -> bool:
        """Whether an array of ``shape`` is a valid value of input ``spec``."""
        return len(shape) == len(spec.shape) and all(
            s == g if isinstance(s, int) else self.dim(s).min <= g <= self.dim(s).max
            for s, g in zip(spec.shape, shape, strict=False)
        )

    def shown(self, spec: InputSpec) -> list[int | str]:
        """The spec's shape for a message: each named dim with its range, ``[batch[1..8], 4]``."""
        return [f"{s}[{self.dim(s).min}..{self.dim(s).max}]" if isinstance(s, str) else s for s in spec.shape]

    def shape_range(self, spec: InputSpec) -> list[tuple[int, int]]:
        """(min, max) per axis: what OpenVINO and TensorRT profiles need."""
        return [(s, s) if isinstance(s, int) else (self.dim(s).min, self.dim(s).max) for s in spec.shape]

    def example_sizes(self) -> dict[str, int]:
        """Sizes to trace with: torch.export specializes a dynamic dim traced at size 0 or 1."""
        sizes = {}
        for name, spec in self.dims.items():
            size = spec.best
            if not spec.static and size < 2:
                size = min(2, spec.max)
            sizes[name] = size
        return sizes

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [spec.model_dump(mode="json", exclude_none=True) for spec in self.inputs],
            "dims": {k: v.model_dump(mode="json", exclude_none=True) for k, v in self.dims.items()},
            "outputs": list(self.outputs),
            **({"cache": self.cache.to_dict()} if self.cache else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        """What :meth:`to_dict` wrote; anything else (a key missing, a value of another type: a
        manifest from elsewhere) raises pydantic's ``ValidationError``, as a manifest's other
        fields do, never a ``KeyError`` or ``TypeError``."""
        parsed = _SignatureData.model_validate(data)
        return cls(tuple(parsed.inputs), parsed.dims, tuple(parsed.outputs), parsed.cache)


class _SignatureData(BaseModel):
    """The checked form of :meth:`Signature.to_dict`'s mapping."""

    inputs: list[InputSpec]
    dims: dict[str, DimSpec]
    outputs: list[str] = []
    cache: CacheSpec | None = None

    @field_validator("cache", mode="before")
    @classmethod
    def _absent(cls, value: Any) -> Any:
        return value or None  # {} was always read as no cache


def random_inputs(sig: Signature, point: Point = "opt", seed: int = 0, sizes: dict[str, int] | None = None) -> Arrays:
    """Seeded inputs at a point of the dim ranges (or explicit sizes, e.g. a benchmark batch)."""
    rng = np.random.default_rng(seed)
    out: Arrays = {}
    for spec in sig.inputs:
        shape = sig.shape(spec, point, sizes)
        if spec.dtype in ("float32", "float16", "bfloat16"):
            # bfloat16 has no numpy dtype: it travels as float32 and is cast at the runtime edge.
            dtype = np.float16 if spec.dtype == "float16" else np.float32
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif spec.dtype == "bool":
            out[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            low, high = spec.range or (0, 1)
            out[spec.name] = rng.integers(low, high + 1, shape).astype(NUMPY_DTYPES[spec.dtype])
    return out


def parity_points(sig: Signature) -> list[Point]:
    """min, opt and max of every dim; one point when every dim is static."""
    if all(spec.static for spec in sig.dims.values()):
        return ["opt"]
    return ["min", "opt", "max"]


def torch_dynamic_shapes(sig: Signature, varargs: bool = False) -> tuple[Any, ...]:
    """``dynamic_shapes`` for ``torch.export.export``, positional in input order. A causal LM's
    step that takes its cache as ``*past`` (``varargs``) needs that entry as one tuple."""
    from torch.export import Dim

    made: dict[str, Any] = {
        name: Dim(name, min=spec.min, max=spec.max) for name, spec in sig.dims.items() if not spec.static
    }
    # A sum of dims is no Dim of its own (a derived Dim has one root): torch.export finds it.
    made.update({s: Dim.AUTO for spec in sig.inputs for s in spec.shape if isinstance(s, str) and SUM in s})
    shapes = tuple(
        {axis: made[s] for axis, s in enumerate(spec.shape) if isinstance(s, str) and s in made} for spec in sig.inputs
    )
    if sig.cache is None or not varargs:
        return shapes
    fixed = len(sig.inputs) - len(sig.cache.past_names)
    return (*shapes[:fixed], shapes[fixed:])


def batch_dim(sig: Signature) -> str | None:
    """The dim that leads the first input: what a batch sweep varies."""
    first = sig.inputs[0].shape[0] if sig.inputs and sig.inputs[0].shape else None
    return first if isinstance(first, str) else None
