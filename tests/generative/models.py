"""Tiny Hugging Face causal LMs built in code, seeded, for the generative tests: each builder writes a
``save_pretrained`` folder (config, safetensors, tokenizer) that reloads offline with
``AutoTokenizer`` / ``AutoModelForCausalLM``, in well under five seconds.

Random weights suit export and parity tests; ``trained_tiny_llama_folder`` is for quantization
figures, where random weights make int4 look far worse than it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

SPECIALS = ("<s>", "</s>", "<unk>", "<pad>")  # ids 0..3, as in examples/tinyllm
VOCAB = 384
HIDDEN = 64
# Multiples of 64, so int4 weight compression can group the inner dimension.
INTERMEDIATE = 128
POSITIONS = 128
# Wider than the usual 0.02 so random logits have clear winners: greedy tokens then agree across
# backends instead of flipping between near ties.
INIT_RANGE = 0.1

TEXT = '''\
The quick brown fox jumps over the lazy dog. A tokenizer splits text into pieces, and a language
model learns which piece comes next. Small models learn the common words first: the, and, of, to,
a, in, is, that, for, it. Then they learn spelling, punctuation, and the shape of a sentence.

def fibonacci(n):
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value

    def __repr__(self):
        return f"Counter({self.value})"


def read_lines(path):
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\\n") for line in handle if line.strip()]


for i in range(10):
    if i % 2 == 0:
        print(i, "is even")
    else:
        print(i, "is odd")

Export turns a Python program into a graph of operations. A runtime loads the graph and runs it on
a processor, often faster than the original program. Quantization stores the weights in fewer bits,
which makes the model smaller and sometimes faster, at the cost of a little accuracy. A gate
compares the outputs of the new artifact with the outputs of the original model and refuses the
artifact when they drift too far apart.

import os
import sys


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: main FILE...")
        return 2
    for name in args:
        if os.path.exists(name):
            print(name, os.path.getsize(name))
        else:
            print(name, "is missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def tiny_tokenizer(folder: Path):
    """A byte-level BPE (~384 tokens) trained on TEXT that prepends ``<s>``, saved into ``folder``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    bos, eos, unk, pad = SPECIALS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad, model_max_length=POSITIONS
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _special_ids(tokenizer) -> dict[str, int]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _llama(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=POSITIONS,
        tie_word_embeddings=False,
        initializer_range=INIT_RANGE,
        **_special_ids(tokenizer),
    )
    with torch.random.fork_rng(devices=[]):  # seeded without moving the caller's generator
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


def _save(model, tokenizer, folder: Path) -> Path:
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_llama_folder(folder: Path, *, seed: int = 0) -> Path:
    """A random LlamaForCausalLM with GQA (4 heads, 2 key/value heads, hidden 64, 2 layers)."""
    tokenizer = tiny_tokenizer(folder)
    return _save(_llama(tokenizer, seed), tokenizer, folder)


def tiny_gpt2_folder(folder: Path, *, seed: int = 0) -> Path:
    """A random GPT2LMHeadModel (n_embd 64, 2 layers, 4 heads); GPT-2's default bos/eos (50256) would
    lie outside this vocabulary, so they are the tokenizer's."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_tokenizer(folder)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=HIDDEN,
        n_layer=2,
        n_head=4,
        n_positions=POSITIONS,
        initializer_range=INIT_RANGE,
        **_special_ids(tokenizer),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()
    return _save(model, tokenizer, folder)


def tiny_gemma2_folder(folder: Path, *, seed: int = 0) -> Path:
    """A random Gemma2ForCausalLM (hidden 64, 2 layers, 4 heads of 16, 2 key/value heads, a 32-token
    sliding window on alternate layers, attention and final logit softcapping): transformers refuses
    sdpa for it, so it loads on eager attention."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokenizer = tiny_tokenizer(folder)
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=POSITIONS,
        sliding_window=32,
        initializer_range=INIT_RANGE,
        **_special_ids(tokenizer),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma2ForCausalLM(config).eval()
    return _save(model, tokenizer, folder)


def tiny_lora_adapter(model_folder: Path, adapter_folder: Path, *, seed: int = 0) -> Path:
    """A LoRA (r 8, alpha 16) on the Llama's q_proj/v_proj. ``init_lora_weights=False`` draws B at
    random instead of zeros, so the adapter changes the outputs without training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_folder)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, config)
    model.save_pretrained(adapter_folder, safe_serialization=True)
    return Path(adapter_folder)


def trained_tiny_llama_folder(folder: Path, *, steps: int = 100, seed: int = 0) -> Path:
    """The tiny Llama trained on TEXT (AdamW, 8 windows of 64 tokens a step) for a few seconds. One
    thread: the same weights whatever the caller's thread count, and no spinning thread pool on
    operations this small."""
    tokenizer = tiny_tokenizer(folder)
    model = _llama(tokenizer, seed)
    stream = torch.tensor(tokenizer(TEXT, verbose=False)["input_ids"] + [tokenizer.eos_token_id])
    window, batch = 64, 8
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(steps):
            starts = torch.randint(0, len(stream) - window, (batch,), generator=gen).tolist()
            ids = torch.stack([stream[s : s + window] for s in starts])
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    return _save(model.eval(), tokenizer, folder)


# Wide enough, and trained on varied enough text, for quantization figures to mean something.
STDLIB_WIDTH = 128


def stdlib_llama_folder(folder: Path, steps: int = 150) -> Path:
    """A 128-wide, 2-layer Llama trained briefly on the Python standard library's own sources.
    ``trained_tiny_llama_folder`` (64 wide, trained on a 2 KB text) memorises its text: its
    held-out perplexity (633) is above its vocabulary (384) and its logits are so sharp that int4
    per-step cosines land at 0.90-0.94, under INT4's 0.95, whatever the block size; trained on
    varied text it predicts like a language model (perplexity ~110) and int4 measures 0.99."""
    import os

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=STDLIB_WIDTH,
        intermediate_size=2 * STDLIB_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=POSITIONS,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    sources = sorted(Path(os.__file__).parent.glob("*.py"))[:40]
    text = "".join(p.read_text(errors="ignore") for p in sources)[:400_000]
    stream = torch.tensor(tokenizer(text)["input_ids"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        model.train()
        for _ in range(steps):
            starts = torch.randint(0, len(stream) - 64, (8,)).tolist()
            ids = torch.stack([stream[s : s + 64] for s in starts])
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    model.eval().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
