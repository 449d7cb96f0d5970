"""Train the tinyllm example: a small Llama-architecture causal LM, its byte-level BPE tokenizer and a
LoRA adapter, on the Python standard library's own sources, so the generative gates run on a real
(if small) model with no download.

    python examples/tinyllm/train.py [--out examples/tinyllm] [--steps N] [--seconds S] [--force]

Writes ``model/`` and ``adapter/`` (``save_pretrained`` folders, git-ignored) and ``heldout.txt``
(committed) under ``--out``. Deterministic for a given Python version (the text is its stdlib) and
thread count: fixed file lists, seeds and ``torch.use_deterministic_algorithms``; ``--seconds`` caps
the wall time instead and gives that up. A stamp (hash of this file and the arguments) skips a
finished run; everything is built in a temporary folder first, so an interrupted run leaves no half
model behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

# Before torch and tokenizers start their thread pools: the machines this runs on are shared.
THREADS = 2
os.environ.setdefault("RAYON_NUM_THREADS", str(THREADS))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

SEED = 0
SPECIALS = ("<s>", "</s>", "<unk>", "<pad>")  # ids 0..3, in this order
VOCAB = 4096
WINDOW = 128
BATCH = 8
STEPS = 450  # ~2.5 minutes on 2 idle cores (0.3 s a step)
LR = 2e-3
WARMUP = 20
EVAL_WINDOWS = 64
HELDOUT_BYTES = 12_000
# Held-out and adapter files are named (present from 3.11 to 3.14); training takes every other public
# top-level module. Private ones are skipped: _sysconfigdata_* holds this machine's paths.
HELDOUT_FILES = ("bisect.py", "fnmatch.py", "glob.py", "heapq.py", "shlex.py", "textwrap.py")
ADAPTER_FILES = ("calendar.py", "pprint.py", "wave.py")
ADAPTER_STEPS = 40
ADAPTER_LR = 3e-3
NEW_TOKENS = 32
OUTPUTS = ("model", "adapter", "heldout.txt")
STAMP = ".stamp"


def stdlib_files() -> tuple[list[Path], list[Path], list[Path]]:
    """(train, held-out, adapter) source files, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    missing = [name for name in HELDOUT_FILES + ADAPTER_FILES if not (root / name).is_file()]
    if missing:
        raise SystemExit(f"{root} lacks {missing}: edit HELDOUT_FILES / ADAPTER_FILES in {__file__}")
    named = set(HELDOUT_FILES + ADAPTER_FILES)
    train = [p for p in sorted(root.glob("*.py")) if not p.name.startswith("_") and p.name not in named]
    return train, [root / n for n in HELDOUT_FILES], [root / n for n in ADAPTER_FILES]


def read(paths: list[Path]) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths]


def train_tokenizer(texts: list[str]):
    """A byte-level BPE (no unknown bytes possible) that prepends ``<s>``, as Llama tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    bos, eos, unk, pad = SPECIALS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad, model_max_length=256
    )


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """Every file as ``<s> ... </s>``, concatenated: windows are cut from this one stream."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def build_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        # 768 rather than Llama's 8/3 ratio (688): int4 weight compression groups K by 32-128.
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    return LlamaForCausalLM(config)


def batches(stream: torch.Tensor, steps: int, seed: int):
    """``steps`` batches of random windows, from a private generator so nothing else shifts them."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - WINDOW, (BATCH,), generator=gen)
        yield torch.stack([stream[s : s + WINDOW] for s in starts.tolist()])


@torch.no_grad()
def perplexity(model, stream: torch.Tensor) -> float:
    """exp(mean next-token loss) over the first EVAL_WINDOWS non-overlapping windows."""
    model.eval()
    count = min(EVAL_WINDOWS, len(stream) // WINDOW)
    windows = stream[: count * WINDOW].view(count, WINDOW)
    total = sum(model(input_ids=chunk, labels=chunk).loss.item() * len(chunk) for chunk in windows.split(16))
    return math.exp(total / count)


def fit(model, stream: torch.Tensor, steps: int, lr: float, seconds: float | None, seed: int) -> list[float]:
    """AdamW with warmup and a cosine decay to a tenth; returns the per-step training losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = min(WARMUP, max(1, steps // 10))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    for step, batch in enumerate(batches(stream, steps, seed)):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.3f}  {time.perf_counter() - start:6.1f}s", flush=True)
        if seconds is not None and time.perf_counter() - start > seconds:
            print(f"  stopped at step {step}: --seconds {seconds} reached", flush=True)
            break
    model.eval()
    return losses


@torch.no_grad()
def continuations(model, tokenizer, prompts: list[str]) -> list[str]:
    out = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


@torch.no_grad()
def logits(model, stream: torch.Tensor) -> torch.Tensor:
    windows = stream[: 8 * WINDOW].view(8, WINDOW)
    return model(input_ids=windows).logits.float()


def heldout_text(texts: list[str]) -> str:
    """The first HELDOUT_BYTES of the held-out files, cut at a line end."""
    text = "".join(texts)[:HELDOUT_BYTES]
    return text[: text.rfind("\n") + 1]


def train_all(work: Path, steps: int, seconds: float | None, prompts: list[str]) -> None:
    """Everything into ``work``; checks the saved folders reload offline and behave as trained."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train_files, heldout_files, adapter_files = stdlib_files()
    train_texts, heldout_texts, adapter_texts = read(train_files), read(heldout_files), read(adapter_files)
    print(
        f"text: {len(train_files)} train files ({sum(map(len, train_texts)) / 1e6:.2f} MB), "
        f"{len(heldout_files)} held out, {len(adapter_files)} for the adapter"
    )

    tokenizer = train_tokenizer(train_texts)
    train_ids, heldout_ids = token_stream(tokenizer, train_texts), token_stream(tokenizer, heldout_texts)
    adapter_ids = token_stream(tokenizer, adapter_texts)
    print(f"tokenizer: vocab {len(tokenizer)}, {len(train_ids)} train tokens, {len(heldout_ids)} held out")

    model = build_model(tokenizer)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    print(f"held-out perplexity before: {perplexity(model, heldout_ids):.1f}")
    losses = fit(model, train_ids, steps, LR, seconds, SEED)
    print(f"train loss {losses[0]:.3f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f} (mean of the last 10)")
    print(f"held-out perplexity after: {perplexity(model, heldout_ids):.1f}")

    model_dir, adapter_dir = work / "model", work / "adapter"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    (work / "heldout.txt").write_text(heldout_text(heldout_texts), encoding="utf-8")

    reloaded_tok = AutoTokenizer.from_pretrained(model_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert reloaded_tok(prompts[0])["input_ids"] == tokenizer(prompts[0])["input_ids"], "tokenizer changed on reload"
    base = logits(model, heldout_ids)
    assert torch.equal(logits(reloaded, heldout_ids), base), "model changed on reload"
    base_text = continuations(reloaded, reloaded_tok, prompts)
    for prompt, text in zip(prompts, base_text, strict=True):
        print(f"  {prompt!r} -> {text!r}")

    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    torch.manual_seed(SEED)
    peft_model = get_peft_model(model, lora)
    print(f"adapter: {sum(p.numel() for p in peft_model.parameters() if p.requires_grad)} trainable parameters")
    fit(peft_model, adapter_ids, ADAPTER_STEPS, ADAPTER_LR, None, SEED + 1)
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)

    adapted = logits(peft_model, heldout_ids)
    cosine = torch.nn.functional.cosine_similarity(adapted, base, dim=-1).mean().item()
    reloaded_peft = PeftModel.from_pretrained(reloaded, adapter_dir).eval()
    assert torch.allclose(logits(reloaded_peft, heldout_ids), adapted, atol=1e-5), "adapter changed on reload"
    adapted_text = continuations(reloaded_peft, reloaded_tok, prompts)
    changed = sum(a != b for a, b in zip(adapted_text, base_text, strict=True))
    merge_error = (logits(reloaded_peft.merge_and_unload(), heldout_ids) - adapted).abs().max().item()
    print(
        f"adapter vs base: mean logit cosine {cosine:.4f}, {changed}/{len(prompts)} continuations changed, "
        f"merged vs unmerged max |diff| {merge_error:.2e}"
    )
    assert cosine < 0.9999, "the adapter does not change the outputs"
    assert merge_error < 1e-4, "merge_and_unload does not match the unmerged adapter"


def stamp_of(steps: int, seconds: float | None) -> str:
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return json.dumps({"train.py": source, "steps": steps, "seconds": seconds, "python": sys.version.split()[0]})


def publish(work: Path, out: Path, stamp: str) -> None:
    """Moves the finished outputs into place; the stamp goes last, so a crash mid-way retrains."""
    (out / STAMP).unlink(missing_ok=True)
    for name in OUTPUTS:
        target = out / name
        if target.is_dir():
            target.rename(work / f"old-{name}")  # swept away with ``work``
        os.replace(work / name, target)
    (out / STAMP).write_text(stamp + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent, help="folder for model/, adapter/, heldout.txt"
    )
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default {STEPS})")
    parser.add_argument(
        "--seconds", type=float, default=None, help="stop training after this wall time (not deterministic)"
    )
    parser.add_argument("--force", action="store_true", help="retrain even when the outputs are up to date")
    args = parser.parse_args(argv)

    out: Path = args.out
    stamp = stamp_of(args.steps, args.seconds)
    stamp_path = out / STAMP
    done = stamp_path.is_file() and stamp_path.read_text().strip() == stamp
    if done and all((out / name).exists() for name in OUTPUTS) and not args.force:
        print(f"{out}: up to date (delete {stamp_path} or pass --force to retrain)")
        return
    prompts = [line for line in (Path(__file__).parent / "prompts.txt").read_text().splitlines() if line.strip()]

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tinyllm-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=".tinyllm-", dir=out))
    try:
        train_all(work, args.steps, args.seconds, prompts)
        publish(work, out, stamp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {', '.join(str(out / n) for n in OUTPUTS)} in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
