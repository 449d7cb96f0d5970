"""A causal LM's step graph in numpy, for the gate's tests that need no toolchain."""

from __future__ import annotations

import numpy as np

from kiln.capture.causal import step_signature as causal_step_signature
from kiln.config import ModelConfig
from kiln.spec import Arrays, CacheSpec, Signature


class NextTokenRunner:
    """A step graph in numpy: logits favour (last token + 1); the cache grows by the fed length."""

    def __init__(self, sig: Signature) -> None:
        self.sig = sig

    def infer(self, inputs: Arrays) -> Arrays:
        cache = self.sig.cache
        assert cache is not None
        ids = inputs["input_ids"]
        logits = np.zeros((1, ids.shape[1], cache.vocab_size), dtype=np.float32)
        logits[0, np.arange(ids.shape[1]), (ids[0] + 1) % cache.vocab_size] = 5.0
        shape = (1, cache.kv_heads, ids.shape[1], cache.head_dim)
        grown = {
            q: np.concatenate([inputs[p], np.zeros(shape, np.float32)], 2)
            for p, q in zip(cache.past_names, cache.present_names, strict=True)
        }
        return {"logits": logits, **grown}


def step_signature(context: int) -> Signature:
    """A one-layer step graph of vocabulary 10 whose context is ``context`` (dims.past.max + 1)."""
    cache = CacheSpec(layers=1, kv_heads=1, head_dim=2, vocab_size=10, max_positions=64)
    dims = {"sequence": {"min": 1, "max": 4}, "past": {"min": 0, "max": context - 1}}
    return causal_step_signature(cache, ModelConfig(name="m", source="x.py:f", dims=dims))
