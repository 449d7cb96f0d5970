"""Greedy-decoding timings of an optimum-intel export with OVModelForCausalLM (the peer's own harness).

    python benchmarks/peers/optimum_generate.py OV_FOLDER --prompt-tokens 128 --new-tokens 64 --threads 2

Runs in the peer venv (re-runs itself there). For a prompt of N tokens and M new tokens, batch 1,
greedy (do_sample=False, num_beams=1, min_new_tokens=M so EOS never stops it early), it reports
  - ttft_s: time from calling generate() to the first new token (prefill + first sampling step),
  - decode_tokens_per_s: (M - 1) / time from the first new token to the last,
  - e2e_s, and peak RSS of the process (ru_maxrss, includes loading and compiling),
as medians over --repeats runs after --warmup runs, printed as one JSON object on stdout.
Token timestamps come from a transformers streamer, so they include generate()'s Python overhead:
this is optimum-intel's figure as its users would see it, not the bare infer-request time.

ov_config: INFERENCE_NUM_THREADS=--threads, PERFORMANCE_HINT=LATENCY, NUM_STREAMS=1, and
INFERENCE_PRECISION_HINT=f32 for an fp32 export (--precision-hint to change it), plus any
--ov-config KEY=VALUE. The compiled model's effective properties are in the output (note
KV_CACHE_PRECISION: optimum-intel writes f16 into an fp32/fp16 IR's runtime options and leaves
the CPU default for int8/int4 IRs).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_venv import ensure_peer_venv, offline_env, versions

PROPERTIES = (
    "INFERENCE_NUM_THREADS",
    "INFERENCE_PRECISION_HINT",
    "KV_CACHE_PRECISION",
    "KEY_CACHE_PRECISION",
    "VALUE_CACHE_PRECISION",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE",
    "PERFORMANCE_HINT",
    "NUM_STREAMS",
    "EXECUTION_MODE_HINT",
    "ENABLE_HYPER_THREADING",
    "ENABLE_CPU_PINNING",
)


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def prompt_ids(tokenizer, n: int, vocab_size: int) -> list[int]:
    """N deterministic token ids: a fixed English text, tokenized and repeated to length."""
    text = (
        "The quick brown fox jumps over the lazy dog. A compiler turns a model into an artifact, "
        "and a benchmark tells how fast that artifact runs on the machine at hand. "
    )
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer is not None else []
    if not ids:
        ids = list(range(4, min(vocab_size, 260)))
    bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    out = [bos] if bos is not None else []
    while len(out) < n:
        out += ids
    return out[:n]


class _Clock:
    """A transformers streamer that timestamps every put(): the prompt first, then each new token."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def put(self, value) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def _parse_kv(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep:
            raise SystemExit(f"--ov-config wants KEY=VALUE, got {it!r}")
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="folder written by optimum_export.py (openvino_model.xml)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision-hint", default=None, help="INFERENCE_PRECISION_HINT (default: f32 for fp32 exports)")
    p.add_argument("--ov-config", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="CPU")
    a = p.parse_args(argv)
    if a.new_tokens < 2:
        p.error("--new-tokens must be at least 2 (decode rate needs two tokens)")

    ensure_peer_venv()
    offline_env()
    rss_start = _rss_mib()

    import torch
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    torch.set_num_threads(a.threads)  # the torch side of generate() (logits processing) stays small too
    peer = json.loads((a.model / "peer.json").read_text()) if (a.model / "peer.json").exists() else {}
    weight_format = peer.get("weight_format")
    hint = a.precision_hint or ("f32" if weight_format == "fp32" else None)
    ov_config: dict[str, str | int] = {
        "INFERENCE_NUM_THREADS": a.threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
    }
    if hint:
        ov_config["INFERENCE_PRECISION_HINT"] = hint
    ov_config.update(_parse_kv(a.ov_config))
    ov_config["CACHE_DIR"] = ""  # no compile cache: every run compiles the same way

    try:
        tokenizer = AutoTokenizer.from_pretrained(a.model)
    except Exception as e:  # timing needs only ids; a missing tokenizer is not fatal
        print(f"tokenizer not loaded ({e}); using synthetic ids", file=sys.stderr)
        tokenizer = None

    t0 = time.perf_counter()
    model = OVModelForCausalLM.from_pretrained(a.model, device=a.device, ov_config=ov_config, compile=True)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mib()
    compiled = model.request.get_compiled_model()
    props = {}
    for name in PROPERTIES:
        try:
            v = compiled.get_property(name)
            props[name] = v.get_type_name() if hasattr(v, "get_type_name") else str(v)
        except Exception:
            continue

    ids = prompt_ids(tokenizer, a.prompt_tokens, model.config.vocab_size)
    input_ids = torch.tensor([ids], dtype=torch.long)
    attention_mask = torch.ones_like(input_ids)
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = model.generation_config.eos_token_id
    if isinstance(pad, list):
        pad = pad[0]
    gen_kwargs = dict(
        do_sample=False,
        num_beams=1,
        max_new_tokens=a.new_tokens,
        min_new_tokens=a.new_tokens,
        pad_token_id=pad,
        use_cache=True,
    )

    runs = []
    last_tokens: list[int] = []
    for i in range(a.warmup + a.repeats):
        clock = _Clock()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, streamer=clock, **gen_kwargs)
        end = time.perf_counter()
        new = out.shape[1] - input_ids.shape[1]
        stamps = clock.stamps[1:]  # [0] is the prompt
        if new != a.new_tokens or len(stamps) != a.new_tokens:
            raise SystemExit(f"generated {new} tokens ({len(stamps)} timestamps), expected {a.new_tokens}")
        if i >= a.warmup:
            runs.append(
                {
                    "ttft_s": stamps[0] - start,
                    "decode_tokens_per_s": (a.new_tokens - 1) / (stamps[-1] - stamps[0]),
                    "e2e_s": end - start,
                }
            )
        last_tokens = out[0, input_ids.shape[1] :].tolist()

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    result = {
        "harness": "optimum-intel OVModelForCausalLM.generate",
        "model": str(a.model),
        "weight_format": weight_format,
        "device": a.device,
        "prompt_tokens": a.prompt_tokens,
        "new_tokens": a.new_tokens,
        "batch": 1,
        "threads": a.threads,
        "warmup": a.warmup,
        "repeats": a.repeats,
        "ttft_s": round(med("ttft_s"), 6),
        "decode_tokens_per_s": round(med("decode_tokens_per_s"), 3),
        "e2e_s": round(med("e2e_s"), 6),
        "load_compile_s": round(load_s, 3),
        "rss_mib": {
            "start": round(rss_start, 1),
            "after_load": round(rss_loaded, 1),
            "end": round(_rss_mib(), 1),
            "peak": round(_peak_rss_mib(), 1),
        },
        "runs": [{k: round(v, 6) for k, v in r.items()} for r in runs],
        "ov_config": ov_config,
        "compiled_properties": props,
        "generated_token_ids": last_tokens,
        "versions": versions(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
