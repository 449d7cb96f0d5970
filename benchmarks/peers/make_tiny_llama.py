"""Writes a tiny random Llama (HF folder: config, safetensors, fast tokenizer) for testing the peers.

    .venv/bin/python benchmarks/peers/make_tiny_llama.py /tmp/tiny-llama

Runs offline in kiln's venv (or the peer venv): the tokenizer is a byte-level BPE trained here on
Python's standard-library docstrings, so nothing is downloaded. Weights are random (seeded), so
the generated text is noise: the folder is for exercising export and timing, not quality.
"""

from __future__ import annotations

import argparse
import pydoc
import sys
from pathlib import Path

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def _corpus() -> list[str]:
    """Deterministic local text: docstrings of a fixed list of stdlib modules."""
    import collections
    import functools
    import itertools
    import json
    import os
    import pathlib
    import re
    import string
    import textwrap

    mods = [collections, functools, itertools, json, os, pathlib, re, string, textwrap]
    lines: list[str] = []
    for m in mods:
        lines += [ln for ln in pydoc.render_doc(m, renderer=pydoc.plaintext).splitlines() if ln.strip()]
    return lines


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(a.seed)
    tok = build_tokenizer(a.vocab_size)
    cfg = LlamaConfig(
        vocab_size=a.vocab_size,
        hidden_size=a.hidden_size,
        intermediate_size=a.hidden_size * 4,
        num_hidden_layers=a.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="float32",
    )
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    a.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(a.out)
    tok.save_pretrained(a.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"tiny llama: {n} parameters, vocab {len(tok)} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
