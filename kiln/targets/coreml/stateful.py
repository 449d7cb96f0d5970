"""A causal LM's step graph as a stateful Core ML model: the KV cache lives in the model.

Core ML (iOS 18 / macOS 15) keeps a model's mutable state between predictions (``ct.StateType``,
``MLModel.make_state()``); coremltools converts a ``torch.export`` program whose registered buffers
are mutated in place into such states. Core ML states are fp16, whatever the compute precision.

The form is built from the captured explicit-cache step graph (:mod:`kiln.capture.causal`), so it needs
nothing but the program and serves any model that graph serves; a graph with an ``attention_mask``
input and a dynamic batch is first re-captured at batch 1 without it (:func:`batch_one`). One fp16 buffer
``kv_cache [2 * layers, kv_heads, context, head_dim]`` (row ``2i`` layer ``i``'s keys, ``2i + 1``
its values; one state, not one per layer: coremltools 9's ``canonicalize_inplace_pattern`` pass
fails on several state writes in a row) holds the whole context, static: ``forward(input_ids, position_ids) -> logits`` with
only ``sequence`` dynamic. In the step graph, each ``cat(past, new)`` becomes a write of the new
keys or values into the cache rows at ``position_ids`` (a one-hot matmul: exact, and plain dense
ops that the Neural Engine runs, where a scatter falls back), and each attention softmax over the
keys gets a mask of the positions not yet written (or left over from a longer sequence). The step
graph is fed past tensors of ``context - sequence`` positions, used only for their length, so its
own causal mask and reshapes see the cache's length; the added mask is then the tighter one. A
chunk is at most ``context - 2`` tokens (that past is kept at 2 or more positions).

Why not the explicit graph with ``RangeDim`` inputs (``coreml`` ``kv_cache = "explicit"``): its
prefill has an empty past (``past`` 0), and Core ML fails at prediction on zero-sized tensors
(coremltools issues 1040, 2516), and every step re-sends and re-returns the whole cache.

Known limits: one state of fixed context (``dims.past.max + 1``), batch 1; the added mask is
causal only, so a model whose own mask is narrower (a sliding window shorter than the context)
is masked wrongly past the window and fails the gate; prefill chunks write the whole cache
state each call (a dense write of ``context`` rows per layer, cheap next to the weights).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from kiln.config import DimSpec
from kiln.decoding import DecodeSession
from kiln.errors import ConfigError, TargetBuildError, error_line
from kiln.spec import Arrays, Signature
from kiln.targets.base import Runner

STATE = "kv_cache"
MASK = "attention_mask"
INPUTS = ("input_ids", "position_ids")


def _expr(size: Any) -> Any:
    """A (symbolic) size as a sympy expression, or an int."""
    node = getattr(size, "node", None)
    return node.expr if node is not None else int(size)


def check_signature(sig: Signature) -> None:
    """The stateful form takes a batch-1 step graph of a causal LM."""
    if sig.cache is None:
        raise ConfigError(
            "coreml: kv_cache = 'state' needs a causal LM's step graph ([model].task = 'text-generation')"
        )
    batch = sig.dims.get("batch")
    if batch is not None and batch.min != 1:  # a dynamic batch from 1 is taken at 1
        raise ConfigError(
            "coreml: the stateful form (kv_cache = 'state') holds one sequence; set [model].dims.batch to 1 "
            "or choose kv_cache = 'explicit'"
        )


def math_attention(program: Any) -> Any:
    """The program with fused attention (``scaled_dot_product_attention``, as transformers' SDPA
    attention captures) decomposed into its math: the rewiring masks the attention softmax."""
    import torch
    from torch._decomp import core_aten_decompositions, get_decompositions

    fused = torch.ops.aten.scaled_dot_product_attention.default
    if not any(n.op == "call_function" and n.target is fused for n in program.graph.nodes):
        return program
    table = core_aten_decompositions()
    table.update(get_decompositions([torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default]))
    return program.run_decompositions(table)


def one_sequence(sig: Signature) -> Signature:
    """The step graph's signature as Core ML runs it: batch 1, no ``attention_mask`` input (one
    sequence needs no padding: the mask is all ones over the past and the chunk)."""
    cache = sig.cache
    assert cache is not None
    if not cache.attention_mask and sig.dims["batch"].static:
        return sig
    dims = {**sig.dims, "batch": DimSpec(min=1, opt=1, max=1)}
    inputs = tuple(spec for spec in sig.inputs if spec.name != MASK)
    return Signature(inputs, dims, sig.outputs, replace(cache, attention_mask=False))


def batch_one(program: Any, sig: Signature) -> tuple[Any, Signature]:
    """The step program re-captured as Core ML converts it, with its signature (:func:`one_sequence`):
    ``forward(input_ids, position_ids, *past)`` at batch 1, feeding the captured graph a mask of
    ones over ``past + sequence``. Core ML takes no input dim that is a sum of dims, the batch-1
    capture makes each view of ``[batch, ...]`` static (GPT-2's decomposed program failed one at
    batch 1 with the batch dynamic), and every weight is stored as the source has it (on the
    dynamic-batch program one layer's q_proj and o_proj matched no stored weight, max_rel 1.21)."""
    import torch

    from kiln.capture.causal import example_inputs
    from kiln.capture.exporters.torch_export import capture

    assert sig.cache is not None
    single = one_sequence(sig)
    if single is sig:
        return program, sig
    if sig.dims["batch"].min != 1:
        raise ConfigError(
            f"coreml: Core ML runs one sequence, and [model].dims.batch starts at {sig.dims['batch'].min}; "
            "let it start at 1"
        )
    step, masked = program.module(), sig.cache.attention_mask

    class OneSequence(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.step = step

        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor) -> Any:
            mask = (torch.ones(1, past[0].shape[2] + input_ids.shape[1], dtype=torch.int64),) if masked else ()
            return self.step(input_ids, *mask, position_ids, *past)

    try:
        return capture(OneSequence(), example_inputs(single), single, strict=False), single
    except Exception as err:
        raise TargetBuildError(f"coreml: re-capturing the step graph at batch 1 failed: {error_line(err)}") from err


def stateful_step(step: Any, sig: Signature) -> Any:
    """The stateful module around ``step``, the program's module (``ExportedProgram.module()``),
    which is rewired in place (see the module docstring)."""
    import torch

    check_signature(sig)
    cache = sig.cache
    assert cache is not None
    context = sig.context_length()

    class Stateful(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer(
                STATE, torch.zeros(2 * cache.layers, cache.kv_heads, context, cache.head_dim, dtype=torch.float16)
            )
            self.scratch: dict[str, Any] = {}  # this call's cache and write masks, read by the rewired graph
            self.step = step

        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
            seq = input_ids.shape[1]
            slots = torch.arange(context, device=position_ids.device)
            positions = position_ids[0]
            hot = (slots[:, None] == positions[None, :]).to(torch.float32)  # [context, seq]
            full = self.kv_cache.to(torch.float32)
            unseen = torch.where(slots[None, :] <= positions[:, None], 0.0, torch.finfo(torch.float32).min)
            self.scratch.update(cache=full, hot=hot, keep=(1.0 - hot.sum(1))[:, None], mask=unseen[None, None])
            # Past tensors of (context - seq) positions: only their length is read by the rewired graph.
            past = [full[j : j + 1, :, : context - seq] for j in range(2 * cache.layers)]
            # The whole context as the step's mask length: the past given is context - seq long.
            mask = (torch.ones(1, context, dtype=torch.int64),) if cache.attention_mask else ()
            out = self.step(input_ids, *mask, position_ids, *past)
            self.scratch.clear()
            self.kv_cache.copy_(torch.cat([out[name] for name in cache.present_names], 0).to(torch.float16))
            return out["logits"]

    module = Stateful()
    _rewire(step, module, sig)
    return module


def _rewire(step: Any, owner: Any, sig: Signature) -> None:
    """Turn each ``cat(past, new)`` into a cache write and mask each attention softmax over the keys."""
    import torch

    graph = step.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(sig.inputs):
        raise TargetBuildError(
            f"coreml: the step graph has {len(placeholders)} inputs, the signature {len(sig.inputs)}"
        )
    assert sig.cache is not None
    ids, pasts = placeholders[0], placeholders[len(sig.inputs) - len(sig.cache.past_names) :]
    kv_length = _expr(pasts[0].meta["val"].shape[2]) + _expr(ids.meta["val"].shape[1])

    def writer(row: int) -> Any:
        def write(new: Any) -> Any:
            """Cache row ``row`` with ``new [1, kv_heads, seq, head_dim]`` written at this call's positions."""
            scratch = owner.scratch
            # Rounded to fp16 as the state stores it: this step attends to what later steps read.
            new = new.to(torch.float16).to(torch.float32)[0]
            # hot [context, seq] @ new [kv_heads, seq, head_dim] -> [kv_heads, context, head_dim]
            return (scratch["cache"][row] * scratch["keep"] + torch.matmul(scratch["hot"], new))[None]

        return write

    def mask(scores: Any) -> Any:
        return scores + owner.scratch["mask"]

    writes = 0
    for row, past in enumerate(pasts):
        for user in list(past.users):
            if user.op != "call_function" or user.target is not torch.ops.aten.cat.default:
                continue
            parts, dim = user.args[0], user.args[1] if len(user.args) > 1 else 0
            if len(parts) != 2 or parts[0] is not past or dim not in (2, -2):
                raise TargetBuildError(f"coreml: unexpected use of {past.name} in the step graph: {user.format_node()}")
            with graph.inserting_after(user):
                written = graph.call_function(writer(row), (parts[1],))
            user.replace_all_uses_with(written)
            graph.erase_node(user)
            writes += 1
    masked = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (
            torch.ops.aten.softmax.int,
            torch.ops.aten._softmax.default,
        ):
            continue
        scores, dim = node.args[0], node.args[1]
        val = scores.meta.get("val")
        if val is None or dim not in (-1, val.dim() - 1) or _expr(val.shape[-1]) != kv_length:
            continue
        with graph.inserting_before(node):
            node.replace_input_with(scores, graph.call_function(mask, (scores,)))
        masked += 1
    if writes != len(pasts) or masked == 0:
        raise TargetBuildError(
            "coreml: the stateful form needs each past concatenated with the new keys or values and an attention "
            f"softmax over the keys; found {writes} of {len(pasts)} concatenations and {masked} softmaxes. "
            "Choose kv_cache = 'explicit' for this model"
        )
    graph.eliminate_dead_code()
    step.recompile()


def longest(sig: Signature) -> int:
    """The longest chunk the stateful step takes: the graph's sequence range, two short of the
    context (the step graph is fed ``context - sequence`` past positions, and torch.export
    specializes a length of 1 where a size-1 dim could broadcast, so it is kept at 2 or more)."""
    return min(sig.dims["sequence"].max, sig.context_length() - 2)


def export(step: Any, sig: Signature) -> Any:
    """The stateful module around ``step`` captured with ``torch.export`` (``sequence`` dynamic)."""
    import torch
    from torch.export import Dim

    module = stateful_step(step, sig)
    seq = min(4, sig.dims["sequence"].max)
    example = (torch.zeros(1, seq, dtype=torch.int64), torch.arange(8, 8 + seq)[None])
    sequence = Dim("sequence", min=1, max=longest(sig))
    shapes = ({1: sequence}, {1: sequence})
    try:
        return torch.export.export(module, example, dynamic_shapes=shapes, strict=False)
    except Exception as err:
        raise TargetBuildError(
            f"coreml: capturing the stateful step failed: {error_line(err)}; "
            "choose kv_cache = 'explicit' for this model"
        ) from err


def convert_types(ct: Any, sig: Signature) -> dict[str, Any]:
    """``ct.convert`` keyword arguments of the stateful form: inputs, the state, the logits."""
    cache = sig.cache
    assert cache is not None
    context = sig.context_length()
    top = longest(sig)
    sequence = ct.RangeDim(
        lower_bound=1, upper_bound=top, default=min(sig.dims["sequence"].best, top), symbol="sequence"
    )
    shape = (2 * cache.layers, cache.kv_heads, context, cache.head_dim)
    return {
        "inputs": [ct.TensorType(name=name, shape=ct.Shape([1, sequence]), dtype=np.int32) for name in INPUTS],
        "states": [ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=np.float16), name=STATE)],
        "outputs": [ct.TensorType(name="logits", dtype=np.float32)],
    }


def describe(sig: Signature) -> dict[str, Any]:
    """The manifest's account of the stateful form."""
    cache = sig.cache
    assert cache is not None
    context = sig.context_length()
    return {
        "form": "state",
        "inputs": {name: [1, "sequence"] for name in INPUTS},
        "input_dtype": "int32",
        "outputs": ["logits"],
        "states": {STATE: [2 * cache.layers, cache.kv_heads, context, cache.head_dim]},
        "state_dtype": "float16",
        "layout": "row 2i: layer i keys, row 2i+1: its values; written at position_ids",
        "context": context,
        "sequence": [1, longest(sig)],
    }


class StateSession(DecodeSession):
    """Decoding on a stateful step: the cache is the model's state, so only tokens go in."""

    def __init__(self, sig: Signature, backend: Any) -> None:
        super().__init__(sig)
        self.backend = backend
        self.max_step = min(self.max_step, longest(sig))
        self.state = backend.new_state()

    def _reset(self) -> None:
        # Stale positions are masked by the model, so a new state is only tidiness.
        self.state = self.backend.new_state()

    def _step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.backend.predict(ids, positions, self.state)


class StateRunner(Runner):
    """A stateful step on a backend (Core ML, or its PyTorch simulation) with ``new_state()``,
    ``predict(ids, positions, state) -> logits``, ``read(state)`` and ``write(state, array)``.
    Decoding goes through :meth:`decode_session`; ``infer`` still answers the explicit step
    contract (past in, present out) by writing the past into a fresh state and reading it back."""

    def __init__(self, sig: Signature, backend: Any, info: dict[str, Any] | None = None) -> None:
        self.sig, self.backend, self._info = sig, backend, info or {}

    def infer(self, inputs: Arrays) -> Arrays:
        cache = self.sig.cache
        assert cache is not None
        state = self.backend.new_state()
        array = np.array(self.backend.read(state), dtype=np.float16)
        length = inputs[cache.past_names[0]].shape[2]
        seq = inputs["input_ids"].shape[1]
        if length + seq > array.shape[2]:
            raise ConfigError(
                f"coreml: {length} past positions and {seq} tokens exceed the context of {array.shape[2]}"
            )
        for row, name in enumerate(cache.past_names):
            array[row, :, :length] = inputs[name][0]
        self.backend.write(state, array)
        logits = self.backend.predict(inputs["input_ids"], inputs["position_ids"], state)
        after = np.asarray(self.backend.read(state), np.float32)
        presents = {name: after[row : row + 1, :, : length + seq] for row, name in enumerate(cache.present_names)}
        return {"logits": np.asarray(logits, np.float32), **presents}

    def decode_session(self, signature: Signature) -> DecodeSession | None:
        return StateSession(signature, self.backend)

    def info(self) -> dict[str, Any]:
        return self._info


class CoreMLState:
    """The package's own state through Core ML (macOS 15+): ``MLModel.make_state()`` and
    ``predict(..., state=)``."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def new_state(self) -> Any:
        return self.model.make_state()

    def predict(self, ids: np.ndarray, positions: np.ndarray, state: Any) -> np.ndarray:
        feed = {"input_ids": np.asarray(ids, np.int32), "position_ids": np.asarray(positions, np.int32)}
        return np.asarray(self.model.predict(feed, state=state)["logits"], np.float32)

    def read(self, state: Any) -> np.ndarray:
        return state.read_state(STATE)

    def write(self, state: Any, array: np.ndarray) -> None:
        state.write_state(STATE, np.ascontiguousarray(array, np.float16))


class TorchState:
    """The stateful module in PyTorch (the simulation): its buffer is the one state."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def new_state(self) -> Any:
        buffer = getattr(self.module, STATE)
        buffer.zero_()
        return buffer

    def predict(self, ids: np.ndarray, positions: np.ndarray, state: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.module(
                torch.as_tensor(np.asarray(ids, np.int64)), torch.as_tensor(np.asarray(positions, np.int64))
            )
        return out.numpy()

    def read(self, state: Any) -> np.ndarray:
        return state.numpy()

    def write(self, state: Any, array: np.ndarray) -> None:
        import torch

        state.copy_(torch.from_numpy(np.ascontiguousarray(array, np.float16)))
