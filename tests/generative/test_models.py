"""The generative fixture builders write folders that reload offline and behave as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.generative import models

PROMPT = "def increment(self, step=1):"


def _reload(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()


@torch.no_grad()
def _logits(model, tokenizer) -> torch.Tensor:
    return model(**tokenizer(PROMPT, return_tensors="pt")).logits


def test_tiny_tokenizer_round_trips_text_with_bos(tmp_path: Path) -> None:
    tokenizer = models.tiny_tokenizer(tmp_path)

    ids = tokenizer(PROMPT)["input_ids"]

    assert 300 <= len(tokenizer) <= 500
    assert ids[0] == tokenizer.bos_token_id == 0
    assert tokenizer.decode(ids, skip_special_tokens=True) == PROMPT


@pytest.mark.parametrize("build", [models.tiny_llama_folder, models.tiny_gpt2_folder])
def test_tiny_folder_reloads_offline_with_special_ids_in_vocab(tmp_path: Path, build) -> None:
    folder = build(tmp_path)

    tokenizer, model = _reload(folder)
    out = model.generate(**tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=4, do_sample=False)

    config = model.config
    assert {config.bos_token_id, config.eos_token_id, config.pad_token_id} <= set(range(config.vocab_size))
    assert config.vocab_size == len(tokenizer)
    assert out.shape[1] == len(tokenizer(PROMPT)["input_ids"]) + 4


def test_tiny_llama_folder_is_seeded(tmp_path: Path) -> None:
    a, b, c = (models.tiny_llama_folder(tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))

    (tok, ma), (_, mb), (_, mc) = _reload(a), _reload(b), _reload(c)

    assert ma.config.num_key_value_heads == 2 < ma.config.num_attention_heads
    assert torch.equal(_logits(ma, tok), _logits(mb, tok))
    assert not torch.equal(_logits(ma, tok), _logits(mc, tok))


def test_tiny_lora_adapter_changes_logits_and_merges(tmp_path: Path) -> None:
    from peft import PeftModel

    folder = models.tiny_llama_folder(tmp_path / "model")
    adapter = models.tiny_lora_adapter(folder, tmp_path / "adapter")

    tokenizer, base = _reload(folder)
    before = _logits(base, tokenizer)
    adapted = PeftModel.from_pretrained(base, adapter).eval()
    after = _logits(adapted, tokenizer)
    merged = _logits(adapted.merge_and_unload(), tokenizer)

    assert (after - before).abs().max() > 0.1
    torch.testing.assert_close(merged, after, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_trained_tiny_llama_folder_beats_random_weights(tmp_path: Path) -> None:
    trained = models.trained_tiny_llama_folder(tmp_path / "trained")
    random = models.tiny_llama_folder(tmp_path / "random")

    (tokenizer, model), (_, untrained) = _reload(trained), _reload(random)
    ids = tokenizer(models.TEXT[:400], return_tensors="pt")["input_ids"]

    assert model(input_ids=ids, labels=ids).loss < 0.5 * untrained(input_ids=ids, labels=ids).loss
