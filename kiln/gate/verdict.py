"""The generation verdict: what a causal LM's artifact generates, measured against eager's answers
and judged against the gate's tolerance. The one implementation behind ``kiln build``'s gate
(eager's answers computed in the build), the golden set it ships and ``kiln verify --run`` (the
same answers read back from ``golden/``), so the same artifact gets the same verdict everywhere.

Figures, per prompt and over all of them (:class:`~kiln.manifest.GenerationResult`):

- greedy tokens, free running: the first step where they leave eager's and the share that agree;
- teacher-forced next-token agreement (top-1): eager's tokens fed one at a time, the artifact's
  argmax against eager's at every step;
- the cosine of the teacher-forced logits at every step, against eager's (teacher forced, so a
  step after a free-running divergence still compares the same context);
- the largest difference of those logits, scaled to each row's magnitude and the vocabulary
  (:func:`kiln.parity.scaled_rel`);
- held-out perplexity, relative to eager's on the same tokens.

The verdict: ``exact_tokens`` and ``min_cosine`` hold for every prompt (a breach names each
prompt that fails them), and where tokens must be exact (fp32) so does ``max_rel``, on the scaled
logits difference: an fp32 artifact whose weights or cache are slightly wrong can still pick
eager's tokens on a few prompts, never with its logits at rounding distance. ``min_top1`` and
``max_perplexity_increase`` hold over all prompts and the held-out text. A golden set keeps only
prompts that pass on their own (:func:`prompt_passes`), so any subset of them passes over all too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kiln.config import Tolerance
from kiln.decoding import DecodeSession, forced, generate, perplexity
from kiln.manifest import GenerationResult, PromptFigures
from kiln.parity import row_cosines, scaled_rel


@dataclass(frozen=True)
class GenerationCase:
    """One prompt with eager's answers: greedy tokens and teacher-forced logits."""

    name: str  # how a breach names it: "prompt 0" in the gate, "case0" in a golden set
    label: str  # the prompt's text (its first 60 characters), or what seeded its ids
    ids: list[int]
    tokens: list[int]
    logits: np.ndarray  # [len(tokens), vocab]

    @property
    def nbytes(self) -> int:
        return 8 * (len(self.ids) + len(self.tokens)) + self.logits.nbytes


@dataclass(frozen=True)
class Heldout:
    """Held-out token ids and eager's perplexity on them."""

    ids: list[int]
    perplexity: float


@dataclass(frozen=True)
class EagerGeneration:
    """Everything an artifact's generation is judged against."""

    cases: list[GenerationCase]
    heldout: Heldout


def measure(session: DecodeSession, eager: EagerGeneration, tolerance: Tolerance, scope: str) -> GenerationResult:
    """Decode every case on ``session`` and score the held-out text; the figures with their verdict.
    ``scope`` starts each breach line (``generation`` in the gate, ``golden`` in verify)."""
    per_prompt, cosines = [], []
    agree = hits = steps = 0
    for case in eager.cases:
        tokens = list(generate(session, case.ids, len(case.tokens)))
        logits = forced(session, case.ids, case.tokens)
        cos = [cosine(a, b) for a, b in zip(logits, case.logits, strict=True)]
        hit = int((logits.argmax(axis=1) == case.logits.argmax(axis=1)).sum())
        scaled = scaled_rel(logits, case.logits) if logits.shape == case.logits.shape else float("inf")
        agree += sum(a == b for a, b in zip(tokens, case.tokens, strict=False))
        hits, steps = hits + hit, steps + len(case.tokens)
        cosines.append(cos)
        per_prompt.append(
            PromptFigures(
                prompt=case.label,
                prompt_ids=list(case.ids),
                eager_tokens=list(case.tokens),
                tokens=tokens,
                first_divergence=first_divergence(tokens, case.tokens),
                forced_top1=hit / len(case.tokens),
                min_cosine=min(cos),
                scaled_rel=scaled,
            )
        )
    ppl = perplexity(session, eager.heldout.ids)
    eager_ppl = eager.heldout.perplexity
    increase = ppl / eager_ppl - 1 if eager_ppl > 0 else 0.0
    width = max(len(c) for c in cosines)
    divergences = [p.first_divergence for p in per_prompt if p.first_divergence is not None]
    flat = [c for row in cosines for c in row]
    result = GenerationResult(
        passed=True,
        tolerance=tolerance,
        prompts=len(eager.cases),
        new_tokens=max(len(c.tokens) for c in eager.cases),
        exact=not divergences,
        token_agreement=agree / steps,
        first_divergence=min(divergences) if divergences else None,
        forced_top1=hits / steps,
        min_cosine=min(flat),
        mean_cosine=float(np.mean(flat)),
        step_cosine=[float(np.mean([c[i] for c in cosines if i < len(c)])) for i in range(width)],
        scaled_rel=max(p.scaled_rel or 0.0 for p in per_prompt),
        heldout_tokens=len(eager.heldout.ids),
        perplexity_eager=eager_ppl,
        perplexity=ppl,
        perplexity_increase=increase,
        breaches=[],
        worst="",
        per_prompt=per_prompt,
    )
    breaches = judge(result, [c.name for c in eager.cases], tolerance, scope)
    return result.model_copy(update={"passed": not breaches, "breaches": breaches, "worst": worst(result)})


def judge(result: GenerationResult, names: Sequence[str], t: Tolerance, scope: str) -> list[str]:
    """The breaches of ``t``, one line each: a prompt's own (named) first, then those over all."""
    breaches = [
        f"{scope} {name} ({p.prompt!r}): {breach}"
        for name, p in zip(names, result.per_prompt, strict=True)
        for breach in prompt_breaches(p, t)
    ]
    top1 = result.forced_top1
    if t.min_top1 is not None and top1 < t.min_top1:
        breaches.append(f"{scope}: next-token agreement {top1:.3f} < {t.min_top1} (min_top1 = {top1:.3f} would pass)")
    inc = result.perplexity_increase
    if t.max_perplexity_increase is not None and inc > t.max_perplexity_increase:
        breaches.append(
            f"{scope}: perplexity {inc:+.2%} vs eager, over {t.max_perplexity_increase:.2%} "
            f"(max_perplexity_increase = {inc:.4f} would pass)"
        )
    return breaches


def prompt_breaches(p: PromptFigures, t: Tolerance) -> list[str]:
    """What one prompt breaches of the tolerances that hold for every prompt."""
    breaches = []
    if t.exact_tokens and p.first_divergence is not None:
        breaches.append(
            f"greedy tokens differ from eager's from step {p.first_divergence} "
            "(exact_tokens = false lets a precision diverge)"
        )
    if t.min_cosine is not None and p.min_cosine < t.min_cosine:
        breaches.append(
            f"logits cosine {p.min_cosine:.6f} < {t.min_cosine} (min_cosine = {p.min_cosine:.6f} would pass)"
        )
    scaled = p.scaled_rel
    if t.exact_tokens and t.max_rel is not None and scaled is not None and not scaled <= t.max_rel:
        hint = f" (max_rel = {scaled:.3g} would pass)" if np.isfinite(scaled) else ""
        breaches.append(f"teacher-forced logits scaled_rel {scaled:.3g} > tolerance {t.max_rel:.3g}{hint}")
    return breaches


def prompt_passes(p: PromptFigures, t: Tolerance) -> bool:
    """Whether one prompt passes on its own, its next-token agreement included: what a golden set
    keeps, so that any set of kept prompts passes over all."""
    return not prompt_breaches(p, t) and (t.min_top1 is None or p.forced_top1 >= t.min_top1)


def worst(result: GenerationResult) -> str:
    """The figures closest to their limits, in a few words (the summary table's)."""
    d = result.first_divergence
    tokens = "tokens exact" if d is None else f"tokens diverge at {d}"
    return f"{tokens}, ppl {result.perplexity_increase:+.2%}, cos {result.min_cosine:.5f}"


def first_divergence(tokens: Sequence[int], eager: Sequence[int]) -> int | None:
    """The first step where the greedy sequences differ (a shorter one differs where it ends)."""
    step = next((i for i, (a, b) in enumerate(zip(tokens, eager, strict=False)) if a != b), None)
    if step is None and len(tokens) != len(eager):
        return min(len(tokens), len(eager))
    return step


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two logits rows (:func:`kiln.parity.row_cosines`); 0 when the artifact's are not finite."""
    return float(row_cosines(a.reshape(1, -1), b.reshape(1, -1))[0])
