"""Generation benchmarks of a causal LM: the prompts that fit an artifact, a cell's figures from
its per-token timings, and the memory-bandwidth roofline of decoding.

Decoding one sequence is bound by memory, not arithmetic: every token reads all the weights once
(but only one row of an untied input embedding) and the KV cache of its context. So the roofline
is ``bandwidth / (weight bytes + KV bytes at the mean context)`` tokens per second, and each cell
reports its decode tokens/s as a fraction of it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kiln.bench.flops import ProgramWeights
from kiln.bench.stats import percentile, summarize
from kiln.config import BenchSettings
from kiln.decoding import context_misfit
from kiln.manifest import Manifest
from kiln.results import Bandwidth, FailedCell, GenerationFigures, MeasuredCell, PromptFigures, Roofline
from kiln.spec import NUMPY_DTYPES, CacheSpec

TOKENIZER = "tokenizer/"  # files an artifact carries that decoding never reads


def fitting_prompts(manifest: Manifest | None, settings: BenchSettings) -> tuple[list[int] | None, list[str]]:
    """The prompt lengths that fit the artifact's context with the new tokens, and a note for each
    one left out; ``None`` when the run is not a generation benchmark."""
    if settings.prompt_tokens is None or settings.new_tokens is None:
        return None, []
    if manifest is None or manifest.signature.cache is None:
        return list(settings.prompt_tokens), []  # the worker's session checks the context
    context = manifest.signature.context_length()
    fit, notes = [], []
    for length in settings.prompt_tokens:
        misfit = context_misfit(length, settings.new_tokens, context)
        if misfit is None:
            fit.append(length)
        else:
            notes.append(f"prompt of {length} tokens left out: {misfit}")
    return fit, notes


def mean_context(prompt_tokens: list[int], new_tokens: int) -> float:
    """Positions attended to, over every decode step: step k (1 .. new - 1) after a prompt of n
    attends n + k, so n + new / 2 on average; prompt lengths weigh alike (each is run as often)."""
    return sum(n + new_tokens / 2 for n in prompt_tokens) / len(prompt_tokens)


def mean_past(prompt_tokens: list[int], new_tokens: int) -> int:
    """The cache length of the average decode step (what FLOPs per token are counted at)."""
    return round(mean_context(prompt_tokens, new_tokens)) - 1


def generation_figures(
    ttft: Mapping[int, list[float]], itl: Mapping[int, list[float]], settings: BenchSettings, notes: list[str]
) -> GenerationFigures:
    """A cell's figures from its timings in seconds, per prompt length."""
    assert settings.new_tokens is not None
    prompts = []
    for length in ttft:
        first = summarize(ttft[length], 1, settings.cv_threshold)
        steps = itl[length]
        prompts.append(
            PromptFigures(
                prompt_tokens=length,
                ttft=first,
                prefill_tokens_per_s=length * 1e3 / first.mean_ms if first.mean_ms > 0 else 0.0,
                itl_p50_ms=percentile(sorted(s * 1e3 for s in steps), 50),
                tokens_per_s=len(steps) / sum(steps) if sum(steps) > 0 else 0.0,
            )
        )
    steps = [s for length in itl for s in itl[length]]
    return GenerationFigures(
        new_tokens=settings.new_tokens,
        generations=min(len(v) for v in ttft.values()),
        prompts=prompts,
        tokens_per_s=len(steps) / sum(steps) if sum(steps) > 0 else 0.0,
        notes=notes,
    )


def kv_bytes_per_position(cache: CacheSpec) -> int:
    """Keys and values of every layer for one position."""
    itemsize = np.dtype(NUMPY_DTYPES.get(cache.dtype, np.float32)).itemsize
    return 2 * cache.layers * cache.kv_heads * cache.head_dim * itemsize


def weights_read(manifest: Manifest, program: ProgramWeights | None) -> tuple[int, str]:
    """Weight bytes one decode step reads, and how they were counted.

    The artifact's files without its tokenizer, but no more than the captured program's own
    weights (a graph file carries more than weights: a tiny model's is mostly graph); less the
    share of an untied input embedding, of which a step reads one row. In a compressed artifact
    the embedding is taken to hold the same share as in the captured program."""
    disk = sum(f.bytes for f in manifest.files if not f.path.startswith(TOKENIZER))
    if program is None or program.total_bytes == 0:
        return disk, "artifact files without the tokenizer"
    stored = min(disk, program.total_bytes)
    share = program.gathered_bytes / program.total_bytes
    basis = "weights: the artifact's files without the tokenizer, at most the captured program's weights" + (
        f", less the untied input embedding ({share:.0%}, one row read per token)" if share else ""
    )
    return round(stored * (1 - share)), basis


def add_rooflines(
    cells: list[MeasuredCell | FailedCell],
    manifests: Mapping[str, Manifest | None],
    programs: Mapping[str, ProgramWeights | None],
    bandwidth: Bandwidth | None,
) -> None:
    """Each generative cell's roofline and what its build's generation gate found (in place)."""
    for cell in cells:
        gen = cell.generation if isinstance(cell, MeasuredCell) else None
        manifest = manifests.get(cell.key)
        if gen is None or manifest is None:
            continue
        gate = manifest.gate.generation
        if gate is not None:
            gen.gate = gate.worst
            gen.perplexity_increase = gate.perplexity_increase
        cache = manifest.signature.cache
        if bandwidth is None or cache is None:
            continue
        weights, basis = weights_read(manifest, programs.get(cell.key))
        context = mean_context([p.prompt_tokens for p in gen.prompts], gen.new_tokens)
        kv = round(kv_bytes_per_position(cache) * context)
        per_token = max(weights + kv, 1)
        bound = bandwidth.gbps * 1e9 / per_token
        gen.roofline = Roofline(
            weight_bytes=weights,
            kv_bytes=kv,
            mean_context=context,
            bytes_per_token=per_token,
            tokens_per_s=bound,
            fraction=gen.tokens_per_s / bound,
            in_cache=per_token < (bandwidth.last_level_cache_bytes or 0),
            basis=f"{basis}; KV cache ({cache.dtype}) at the mean context; {bandwidth.gbps:g} GB/s measured",
        )
