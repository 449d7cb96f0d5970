"""A causal LM's OpenVINO artifact as an OpenVINO GenAI model folder.

``openvino_genai.LLMPipeline(folder, "CPU")`` and ``ContinuousBatchingPipeline`` (openvino-genai
2026.4.1) open a folder holding ``openvino_model.xml``/``.bin`` (a stateful IR with inputs
``input_ids``, ``attention_mask``, ``position_ids`` and ``beam_idx``), the tokenizer and
detokenizer as IRs (``openvino_tokenizer.xml``/``openvino_detokenizer.xml``, made by
``openvino_tokenizers.convert_tokenizer``: without them the pipeline has no EOS and refuses to
generate), and ``generation_config.json``; ``config.json`` is the model's, as optimum-intel's
``optimum-cli export openvino`` writes it (the pipelines run without it). Both pipelines'
default backend, paged attention, converts the stateful IR's attention to ``PagedAttention``
when the cache state has a dynamic batch and the keys and values reach attention at the KV-head
count, widened in the form the transformation reads (:mod:`kiln.capture.causal`); otherwise
``LLMPipeline`` prints "Paged Attention backend initialization failed. Falling back to SDPA
backend." and ``ContinuousBatchingPipeline`` fails. kiln's ``manifest.json`` beside them is
ignored by both.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

MAIN = "openvino_model.xml"
TOKENIZER = "openvino_tokenizer.xml"
DETOKENIZER = "openvino_detokenizer.xml"
COPIED = ("config.json", "generation_config.json")


def write_model_folder(ov: Any, folder: Path, tokenizer_dir: Path) -> tuple[list[str], str | None]:
    """Write the tokenizer IRs and copy the model's configs into the artifact ``folder``; the
    names written and, where the tokenizer IRs could not be made, why."""
    written = []
    for name in COPIED:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, folder / name)
            written.append(name)
    try:
        import openvino_tokenizers
        from transformers import AutoTokenizer
    except ImportError as err:
        return written, f"no tokenizer IRs ({err.name} is not installed: pip install 'kiln[openvino]')"
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        tokenizer, detokenizer = openvino_tokenizers.convert_tokenizer(hf_tokenizer, with_detokenizer=True)
    except Exception as err:  # a tokenizer openvino-tokenizers cannot convert: the IR is still kiln's
        return written, f"no tokenizer IRs (openvino_tokenizers: {type(err).__name__}: {err})"
    ov.save_model(tokenizer, str(folder / TOKENIZER))
    ov.save_model(detokenizer, str(folder / DETOKENIZER))
    return [*written, TOKENIZER, DETOKENIZER], None
