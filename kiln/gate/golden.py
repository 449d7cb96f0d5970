"""The golden set: a few of the gate's own inputs and eager's outputs for them, shipped in the
artifact folder (``golden/``), so a device that receives the artifact can prove it reproduces the
numerics the gate accepted (``kiln verify --run``) without the model's source, data or PyTorch.

What goes in, from the cases the gate itself ran:

- a precision that calibrates (static int8) is gated on real data only, so its golden cases are
  real too (calibration samples, evaluation batches): seeded noise lies outside the calibrated
  ranges and saturates; where the batch dim can be filled from real rows, one case has the batch
  at its max;
- any other precision: the seeded cases at the dims' min, opt and max, and a couple of real
  samples when the build has data;
- a causal LM: the gate's prompts (ids), eager's greedy tokens and eager's teacher-forced logits,
  and the held-out text (ids) with eager's perplexity on it.

Each case is screened at build time: only cases this artifact passes *individually* under the
gate's tolerance are kept. A subset can fail a fraction the full set passed (one flipped row out
of 8 is a top-1 of 0.875 against a gate at 0.95), and a device must not fail for that. So the
golden set proves reproduction; the full gate's figures stay in the manifest. A gate that did not
run here (no runtime, no simulation) still gets a golden set from eager, unscreened.

Capped at :data:`MAX_CASES` cases and :data:`MAX_BYTES` (always at least one case), one case at
each dim's max first where the cap allows (a runtime that planned memory for the example's shape
fails there), then the kinds in turn. ``verify --run`` applies :class:`GoldenRecord`'s tolerance:
the gate's own, judged as the gate judged it: a causal LM through :mod:`kiln.gate.verdict`, so
where the golden set holds all the gate's prompts, verify's figures are the gate's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from kiln.config import Tolerance
from kiln.decoding import session_for
from kiln.errors import ConfigError
from kiln.gate.verdict import EagerGeneration, GenerationCase, Heldout, measure, prompt_passes
from kiln.manifest import GenerationResult, GoldenRecord, ParityResult
from kiln.parity import ParityReport
from kiln.spec import Arrays, Signature, batch_dim
from kiln.targets.base import Runner

GOLDEN = "golden"
INDEX, INPUTS, EXPECTED = "index.json", "inputs.npz", "expected.npz"
GOLDEN_SCHEMA = "kiln.gate.golden/2"  # 2: a causal LM's held-out text
MAX_CASES = 8
MAX_BYTES = 2 * 2**20
REAL_SAMPLES = 2  # real cases offered beside the seeded ones (per kind)
HELDOUT_IDS, HELDOUT_PERPLEXITY = "heldout/ids", "heldout/perplexity"  # a causal LM's held-out text

Infer = Callable[[Arrays], Arrays]


@dataclass(frozen=True, eq=False)  # compared by identity: it holds arrays
class Candidate:
    """One case the gate ran: its kind (seeded | calibration | evaluation), inputs and eager's outputs."""

    kind: str
    label: str
    inputs: Arrays
    expected: Arrays

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.inputs.values(), *self.expected.values()))


@dataclass(frozen=True)
class GateSetup:
    """How the gate judged this artifact: its tolerance and which outputs top-1 applies to."""

    tolerance: Tolerance
    primary: str | None = None
    classifiers: tuple[str, ...] = ()


class GoldenCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    label: str
    shapes: dict[str, list[int]]  # the inputs' shapes (a causal LM: the prompt's and tokens' lengths)
    at_max: list[str] = []  # the dims at their max in this case


class GoldenIndex(BaseModel):
    """``golden/index.json``: what each case is; the arrays are in inputs.npz and expected.npz,
    keyed ``<case>/<input or output name>``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_id: str = GOLDEN_SCHEMA
    generative: bool = False
    cases: list[GoldenCase]


def dims_at_max(sig: Signature, inputs: Arrays) -> list[str]:
    """The named dims whose every axis in ``inputs`` is at the dim's max."""
    sizes: dict[str, set[int]] = {}
    for spec in sig.inputs:
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and spec.name in inputs:
                sizes.setdefault(dim, set()).add(int(inputs[spec.name].shape[axis]))
    return [d for d, seen in sizes.items() if not sig.dim(d).static and seen == {sig.dim(d).max}]


def passes(runner: Runner, case: Candidate, gate: GateSetup) -> bool:
    """Whether the artifact's outputs for this one case are within the gate's tolerance."""
    return not case_breaches(runner.infer(case.inputs), case, gate)


def case_breaches(got: Arrays, case: Candidate, gate: GateSetup) -> list[str]:
    report = ParityReport(gate.tolerance, primary=gate.primary, classifiers=gate.classifiers)
    report.add_case(got, case.expected, case.inputs)
    return report.breaches()


def max_batch_case(sig: Signature, real: Sequence[Candidate], eager: Infer) -> Candidate | None:
    """Real rows stacked to the batch dim's max (eager's outputs computed for them), where every
    input leads with the batch dim and no real case reaches its max already."""
    dim = batch_dim(sig)
    if dim is None or sig.dims[dim].static or not real:
        return None
    if not all(spec.shape and spec.shape[0] == dim for spec in sig.inputs):
        return None
    if any(dim in dims_at_max(sig, c.inputs) for c in real):
        return None
    size = sig.dims[dim].max
    rows = real[0].nbytes // max(1, next(iter(real[0].inputs.values())).shape[0])
    if rows * size > MAX_BYTES:
        return None
    try:
        parts = {n: np.concatenate([c.inputs[n] for c in real]) for n in sig.input_names}
    except ValueError:  # the samples differ in another dim: rows cannot be stacked
        return None
    count = next(iter(parts.values())).shape[0]
    index = np.arange(size) % count  # cycle through the real rows
    inputs = {n: np.ascontiguousarray(a[index]) for n, a in parts.items()}
    sources = " and ".join(dict.fromkeys(c.kind for c in real))
    return Candidate(real[0].kind, f"{sources} rows stacked to the {dim} max ({size})", inputs, eager(inputs))


def choose(sig: Signature, cases: Sequence[Candidate]) -> list[Candidate]:
    """Within the caps: first the smallest case at each dim's max, then the kinds in turn."""
    chosen: list[Candidate] = []
    total = 0

    def take(case: Candidate) -> None:
        nonlocal total
        if all(case is not c for c in chosen) and len(chosen) < MAX_CASES and total + case.nbytes <= MAX_BYTES:
            chosen.append(case)
            total += case.nbytes

    for dim, spec in sig.dims.items():
        if not spec.static:
            at_max = [c for c in cases if dim in dims_at_max(sig, c.inputs)]
            if at_max:
                take(min(at_max, key=lambda c: c.nbytes))
    kinds: dict[str, list[Candidate]] = {}
    for case in cases:
        kinds.setdefault(case.kind, []).append(case)
    for i in range(max((len(v) for v in kinds.values()), default=0)):
        for group in kinds.values():
            if i < len(group):
                take(group[i])
    return chosen or ([min(cases, key=lambda c: c.nbytes)] if cases else [])


def write_cases(
    folder: Path,
    sig: Signature,
    candidates: Sequence[Candidate],
    gate: GateSetup,
    runner: Runner | None,
    eager: Infer,
) -> GoldenRecord:
    """Screen the gate's cases on this artifact's runner (``None``: the gate did not run), pick
    within the caps and write ``golden/`` into the artifact folder."""
    real = [c for c in candidates if c.kind != "seeded"]
    stacked = max_batch_case(sig, real, eager) if real and len(real) == len(candidates) else None
    offered = [*candidates, *([stacked] if stacked else [])]
    screened = runner is not None
    kept = [c for c in offered if passes(runner, c, gate)] if runner is not None else offered
    # A gate that failed may leave no case passing: its golden set then fails verify --run too.
    chosen = choose(sig, kept or offered)
    inputs = {f"case{i}/{k}": v for i, c in enumerate(chosen) for k, v in c.inputs.items()}
    expected = {f"case{i}/{k}": v for i, c in enumerate(chosen) for k, v in c.expected.items()}
    entries = [
        GoldenCase(
            name=f"case{i}",
            kind=c.kind,
            label=c.label,
            shapes={k: list(v.shape) for k, v in c.inputs.items()},
            at_max=dims_at_max(sig, c.inputs),
        )
        for i, c in enumerate(chosen)
    ]
    return _write(folder, GoldenIndex(cases=entries), inputs, expected, gate, screened and bool(kept))


def write_prompts(
    folder: Path, eager: EagerGeneration, figures: GenerationResult | None, gate: GateSetup
) -> GoldenRecord:
    """A causal LM's golden set: the gate's prompts that passed one by one (``figures``: the
    gate's per-prompt figures; ``None`` when it did not run), within the caps, and the held-out
    text with eager's perplexity on it."""
    prompts = eager.cases
    per_prompt = figures.per_prompt if figures is not None else None
    if per_prompt is not None and len(per_prompt) == len(prompts):
        kept = [p for p, f in zip(prompts, per_prompt, strict=True) if prompt_passes(f, gate.tolerance)]
    else:
        kept = []
    pool = kept or list(prompts)
    chosen: list[GenerationCase] = []
    total = 8 * len(eager.heldout.ids)
    for prompt in pool:
        if len(chosen) < MAX_CASES and total + prompt.nbytes <= MAX_BYTES:
            chosen.append(prompt)
            total += prompt.nbytes
    chosen = chosen or [min(pool, key=lambda p: p.nbytes)]
    inputs = {f"case{i}/prompt_ids": np.asarray(p.ids, np.int64) for i, p in enumerate(chosen)}
    inputs[HELDOUT_IDS] = np.asarray(eager.heldout.ids, np.int64)
    expected: Arrays = {HELDOUT_PERPLEXITY: np.asarray(eager.heldout.perplexity, np.float64)}
    for i, p in enumerate(chosen):
        expected[f"case{i}/tokens"] = np.asarray(p.tokens, np.int64)
        expected[f"case{i}/logits"] = np.asarray(p.logits, np.float32)
    entries = [
        GoldenCase(
            name=f"case{i}",
            kind="prompts",
            label=p.label,
            shapes={"prompt_ids": [len(p.ids)], "tokens": [len(p.tokens)]},
        )
        for i, p in enumerate(chosen)
    ]
    return _write(folder, GoldenIndex(generative=True, cases=entries), inputs, expected, gate, bool(kept))


def _write(
    folder: Path, index: GoldenIndex, inputs: Arrays, expected: Arrays, gate: GateSetup, screened: bool
) -> GoldenRecord:
    out = folder / GOLDEN
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / INPUTS, **inputs)
    np.savez(out / EXPECTED, **expected)
    (out / INDEX).write_text(json.dumps(index.model_dump(mode="json", by_alias=True), indent=2) + "\n")
    return GoldenRecord(
        cases=len(index.cases),
        kinds=sorted({c.kind for c in index.cases}),
        bytes=sum((out / name).stat().st_size for name in (INDEX, INPUTS, EXPECTED)),
        tolerance=gate.tolerance,
        primary=gate.primary,
        classifiers=list(gate.classifiers),
        screened=screened,
    )


@dataclass(frozen=True)
class GoldenSet:
    """``golden/`` read back: the index and its arrays."""

    index: GoldenIndex
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]

    @classmethod
    def read(cls, folder: Path) -> GoldenSet:
        out = folder / GOLDEN
        try:
            index = GoldenIndex.model_validate_json((out / INDEX).read_text())
            with np.load(out / INPUTS, allow_pickle=False) as a, np.load(out / EXPECTED, allow_pickle=False) as b:
                inputs, expected = {k: a[k] for k in a.files}, {k: b[k] for k in b.files}
        except (OSError, ValueError) as err:
            raise ConfigError(f"{out} is missing or unreadable ({err}); rebuild the artifact with kiln build") from err
        if index.schema_id != GOLDEN_SCHEMA:
            raise ConfigError(
                f"{out / INDEX} is {index.schema_id!r} and this kiln reads {GOLDEN_SCHEMA!r}; "
                "rebuild the artifact with this kiln"
            )
        return cls(index, inputs, expected)

    def eager_generation(self) -> EagerGeneration:
        """A causal LM's cases and held-out text, as the gate held them."""
        cases = []
        for case in self.index.cases:
            tokens, logits = self.expected[f"{case.name}/tokens"], self.expected[f"{case.name}/logits"]
            if tokens.ndim != 1 or logits.ndim != 2 or len(tokens) != len(logits) or not len(tokens):
                raise ConfigError(
                    f"golden {case.name}: {len(tokens)} tokens and logits of shape {list(logits.shape)} do not "
                    "match; the golden set was changed, rebuild the artifact with kiln build"
                )
            ids = self.inputs[f"{case.name}/prompt_ids"].tolist()
            cases.append(GenerationCase(case.name, case.label, ids, tokens.tolist(), logits))
        heldout = Heldout(self.inputs[HELDOUT_IDS].tolist(), float(self.expected[HELDOUT_PERPLEXITY]))
        return EagerGeneration(cases, heldout)

    def arrays(self, store: dict[str, np.ndarray], case: str) -> Arrays:
        prefix = f"{case}/"
        return {k.removeprefix(prefix): v for k, v in store.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class Replay:
    """The golden set replayed on an artifact: the breaches, one line each naming the case (empty:
    it reproduces what the gate accepted), and a causal LM's figures (the gate's kind)."""

    breaches: list[str]
    generation: GenerationResult | None = None
    parity: ParityResult | None = None  # a fixed graph: over all the cases, as the gate measures


def check(folder: Path, sig: Signature, record: GoldenRecord, runner: Runner) -> Replay:
    """Run the golden set on ``runner`` and judge it under the gate's tolerance: a causal LM by
    :func:`kiln.gate.verdict.measure`, as the gate; a fixed graph by the gate's
    :class:`~kiln.parity.ParityReport`, each case on its own (a breach names its case; every case
    passed on its own at build time) and over all of them for the figures."""
    golden = GoldenSet.read(folder)
    gate = GateSetup(record.tolerance, record.primary, tuple(record.classifiers))
    if golden.index.generative:
        session = session_for(runner, sig)
        try:
            result = measure(session, golden.eager_generation(), gate.tolerance, "golden")
        finally:
            session.close()
        return Replay(list(result.breaches), result)
    breaches = []
    overall = ParityReport(gate.tolerance, primary=gate.primary, classifiers=gate.classifiers)
    for case in golden.index.cases:
        candidate = Candidate(
            case.kind, case.label, golden.arrays(golden.inputs, case.name), golden.arrays(golden.expected, case.name)
        )
        got = runner.infer(candidate.inputs)
        overall.add_case(got, candidate.expected, candidate.inputs)
        for breach in case_breaches(got, candidate, gate):
            breaches.append(f"golden {case.name} ({case.label}): {breach}")
    return Replay(breaches, parity=overall.result("golden"))
