"""A causal LM's ONNX Runtime artifact as an ONNX Runtime GenAI model folder.

``onnxruntime_genai.Model(folder)`` reads ``genai_config.json`` and the tokenizer files at the
folder's root and drives the decode loop itself (greedy or sampled search, its own KV-cache
handling). kiln's step graph already has what its generic ``decoder`` model type needs: token ids
and positions in, logits out, and one past/present pair per layer whose names follow a pattern
(``past.%d.key`` -> ``present.%d.key``), so the folder needs only the config and the tokenizer
beside kiln's record; no graph change (onnxruntime-genai 0.18: the same greedy tokens as kiln's
own loop, tests/generative/test_ort_aoti.py). With ``genai_config.json`` present the runtime does
not take kiln's ``manifest.json`` for its model-package format.

Batched generation (rows of different lengths, left-padded) needs the step graph's
``attention_mask`` input and a dynamic batch, both there for a transformers causal LM
(:mod:`kiln.capture.causal`; batch up to ``[model].dims.batch.max``, 8 by default); a step graph
captured without a mask is for batch 1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kiln.spec import Signature

CONFIG = "genai_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _eos(tokenizer_dir: Path, fallback: int | None) -> int | list[int] | None:
    """Every EOS id of ``generation_config.json`` (one or a list), else the signature's."""
    path = tokenizer_dir / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        if isinstance(eos, int) or (isinstance(eos, list) and eos and all(isinstance(e, int) for e in eos)):
            return eos
    return fallback


def _pad(tokenizer_dir: Path, fallback: int) -> int:
    """The tokenizer's own pad id (``pad_token`` of ``tokenizer_config.json``, an added token of
    ``tokenizer.json``), else ``fallback`` (the EOS). onnxruntime-genai 0.18 masks the tokens equal to
    the pad id of a batch's first input, but not when that id is also the EOS."""
    settings, vocab = tokenizer_dir / "tokenizer_config.json", tokenizer_dir / "tokenizer.json"
    if not (settings.is_file() and vocab.is_file()):
        return fallback
    pad = json.loads(settings.read_text()).get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    added = {t.get("content"): t.get("id") for t in json.loads(vocab.read_text()).get("added_tokens", [])}
    found = added.get(pad) if isinstance(pad, str) else None
    return found if isinstance(found, int) else fallback


def config(sig: Signature, main: str, tokenizer_dir: Path) -> dict[str, Any]:
    """``genai_config.json`` for the step graph in ``main``."""
    cache = sig.cache
    assert cache is not None, "a causal LM's signature has its cache"
    # the patterns of CacheSpec.past_names / present_names ("past.0.key"), the layer as %d
    past, present = cache.past_names[0].replace(".0.", ".%d."), cache.present_names[0].replace(".0.", ".%d.")
    eos = _eos(tokenizer_dir, cache.eos_token_id)
    length = sig.context_length()
    model: dict[str, Any] = {
        "type": "decoder",
        "context_length": length,
        "vocab_size": cache.vocab_size,
        "decoder": {
            "filename": main,
            "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
            "head_size": cache.head_dim,
            "num_hidden_layers": cache.layers,
            "num_key_value_heads": cache.kv_heads,
            "inputs": {
                "input_ids": "input_ids",
                "position_ids": "position_ids",
                **({"attention_mask": "attention_mask"} if cache.attention_mask else {}),
                "past_key_names": past,
                "past_value_names": past.replace("key", "value"),
            },
            "outputs": {
                "logits": "logits",
                "present_key_names": present,
                "present_value_names": present.replace("key", "value"),
            },
        },
    }
    if cache.bos_token_id is not None:
        model["bos_token_id"] = cache.bos_token_id
    if eos is not None:
        model["eos_token_id"] = eos
        model["pad_token_id"] = _pad(tokenizer_dir, eos[0] if isinstance(eos, list) else eos)
    search = {"do_sample": False, "num_beams": 1, "max_length": length, "past_present_share_buffer": False}
    return {"model": model, "search": search}


def write_model_folder(folder: Path, sig: Signature, main: str, tokenizer_dir: Path) -> list[str]:
    """Write ``genai_config.json`` and the tokenizer files into the artifact ``folder``; the names
    written."""
    (folder / CONFIG).write_text(json.dumps(config(sig, main, tokenizer_dir), indent=2) + "\n")
    written = [CONFIG]
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, folder / name)
            written.append(name)
    return written
