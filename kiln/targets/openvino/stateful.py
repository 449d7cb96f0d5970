"""A causal LM's step graph as an OpenVINO stateful IR: the KV cache lives in the request.

The step graph ``(input_ids, attention_mask, position_ids, past.*) -> (logits, present.*)``
(kiln.capture.causal) is turned into the form optimum-intel gives OpenVINO's LLM runtimes, built
with OpenVINO's own passes (openvino 2026.4), the form OpenVINO GenAI's ``LLMPipeline`` and
``ContinuousBatchingPipeline`` load:

- every named dim is unbounded (``-1``): the batch, so the state's batch is dynamic (the
  paged-attention transformation that continuous batching needs refuses a fixed one), and the
  sequence and past, since the runtimes feed prompts of any length and kiln's decode session
  bounds the context itself; the cache inputs are ``[-1, kv_heads, -1, head_dim]``;
- ``beam_idx`` ``int32 [batch]``: a ``Gather`` on the batch axis of every cache input, so a
  runtime can reorder the cache between steps (beam search) without reading it out;
- ``openvino.passes.MakeStateful`` pairs each ``past.<i>.key|value`` Parameter with its
  ``present.<i>.key|value`` Result: a ``ReadValue``/``Assign`` variable (its id is the two names
  joined, ``past.0.keypresent.0.key``);
- each ``ReadValue`` starts from zeros ``[batch of input_ids, kv_heads, 0, head_dim]``: an empty
  cache whatever the batch, so ``reset_state()`` is a new sequence.

The IR then has inputs ``input_ids``, ``attention_mask``, ``position_ids``, ``beam_idx`` and one
output, ``logits``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.decoding import DecodeSession, step_feed
from kiln.errors import TargetBuildError
from kiln.spec import Arrays, Signature

BEAM = "beam_idx"


def is_stateful(model: Any) -> bool:
    return any(op.get_type_name() == "ReadValue" for op in model.get_ops())


def cache_shapes(sig: Signature) -> dict[str, Any]:
    """Shapes to pin: every named dim unbounded, the cache's heads and width fixed."""
    import openvino as ov

    return {
        spec.name: ov.PartialShape([ov.Dimension(-1) if isinstance(s, str) else ov.Dimension(s) for s in spec.shape])
        for spec in sig.inputs
    }


def make_stateful(model: Any, sig: Signature) -> dict[str, Any]:
    """Hide the cache in the model (in place); return what the manifest records."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino.passes import MakeStateful, Manager

    cache = sig.cache
    assert cache is not None
    ids = model.input("input_ids")
    beam = ops.parameter(ov.PartialShape([ids.get_partial_shape()[0]]), ov.Type.i32, name=BEAM)
    beam.output(0).get_tensor().set_names({BEAM})
    model.add_parameters([beam])
    for name in cache.past_names:
        port = model.input(name)
        consumers = port.get_target_inputs()
        reordered = ops.gather(port, beam, ops.constant(np.int64(0)))
        for consumer in consumers:
            consumer.replace_source_output(reordered.output(0))
    model.validate_nodes_and_infer_types()
    manager = Manager()
    manager.register_pass(MakeStateful(dict(zip(cache.past_names, cache.present_names, strict=True))))
    manager.run_passes(model)
    batch = ops.gather(
        ops.shape_of(model.input("input_ids"), "i64"), ops.constant(np.array([0], np.int64)), ops.constant(np.int64(0))
    )
    empty = ops.concat([batch, ops.constant(np.array([cache.kv_heads, 0, cache.head_dim], np.int64))], 0)
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            op.set_arguments([ops.broadcast(ops.constant(np.float32(0)), empty)])
    model.validate_nodes_and_infer_types()
    variables = {v.info.variable_id for v in model.get_variables()}
    states = {p: p + q for p, q in zip(cache.past_names, cache.present_names, strict=True)}
    if set(states.values()) != variables:
        raise TargetBuildError(f"MakeStateful made variables {sorted(variables)}, expected {sorted(states.values())}")
    return {
        "stateful": True,
        "ir_inputs": [p.get_any_name() for p in model.inputs],
        "ir_outputs": [p.get_any_name() for p in model.outputs],
        "states": states,
        "cache_shape": str(model.get_variables()[0].info.data_shape),  # "[?,2,?,16]": batch and past dynamic
    }


class StatefulSession(DecodeSession):
    """One sequence on its own infer request: the cache stays in the request's variables."""

    def __init__(self, compiled: Any, sig: Signature) -> None:
        super().__init__(sig)
        self.request = compiled.create_infer_request()
        self.logits = compiled.output("logits")
        self.beam = np.zeros(1, dtype=np.int32)  # batch 1, no reordering
        self._reset()

    def _reset(self) -> None:
        self.request.reset_state()

    def _step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        feed = {**step_feed(self.sig, ids, positions), BEAM: self.beam}
        result = self.request.infer(feed, share_inputs=True)
        return np.array(result[self.logits])  # the request reuses its output buffer

    def close(self) -> None:
        self.request = None


def step_infer(request: Any, compiled: Any, sig: Signature, inputs: Arrays) -> Arrays:
    """The step graph on the stateful IR, faithfully: the given past is written into the
    variables, one step runs, and the presents are read back out of them."""
    import openvino as ov

    cache = sig.cache
    assert cache is not None
    request.reset_state()  # an empty cache: the initializer's zeros of length 0
    states = {s.name: s for s in request.query_state()}
    for p, q in zip(cache.past_names, cache.present_names, strict=True):
        past = np.ascontiguousarray(inputs[p], dtype=np.float32)
        if past.shape[2]:
            states[p + q].state = ov.Tensor(past)
    batch = inputs["input_ids"].shape[0]
    feed = {name: inputs[name] for name in ("input_ids", "attention_mask", "position_ids") if name in inputs}
    feed[BEAM] = np.arange(batch, dtype=np.int32)
    result = request.infer(feed)
    out = {"logits": np.array(result[compiled.output("logits")])}
    for p, q in zip(cache.past_names, cache.present_names, strict=True):
        out[q] = np.array(states[p + q].state.data)
    return {name: out[name] for name in sig.outputs}
