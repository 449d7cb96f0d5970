"""The eager reference every artifact is gated against, computed once per build.

The reference is the source model itself (the user's ``nn.Module``, the loaded program, or for an
ONNX source, ONNX Runtime at fp32 on the source file). Parity cases are seeded inputs at the min,
opt and max of every dim plus up to 8 calibration samples; the task metric runs on the evaluation
set when one is configured. Which tolerances apply and whether a precision is gated on real data
only is the registry's policy; the build passes both in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.capture.exporters import ExportBundle
from kiln.config import KilnConfig, Tolerance
from kiln.data import CalibrationSet, EvaluationSet, load_calibration, load_evaluation
from kiln.decoding import (
    ContextError,
    Tokenizer,
    context_misfit,
    forced,
    generate,
    perplexity,
    prompt_room,
    session_for,
)
from kiln.gate.verdict import EagerGeneration, GenerationCase, Heldout, measure
from kiln.manifest import EvaluationResult, Gate
from kiln.metrics import evaluate, metric_drop
from kiln.parity import ParityReport
from kiln.spec import Arrays, Signature, parity_points, random_inputs
from kiln.targets.base import Runner, RunOptions

CALIBRATION_CASES = 8


@dataclass(frozen=True)
class BuildData:
    """Calibration and evaluation data, loaded and checked once per build, handed both to every
    target's compile and to the gate."""

    calibration: CalibrationSet | None = None
    evaluation: EvaluationSet | None = None

    @classmethod
    def load(cls, config: KilnConfig, sig: Signature) -> BuildData:
        calibration = load_calibration(config.calibration, sig, config.root) if config.calibration else None
        evaluation = load_evaluation(config.evaluation, sig, config.root) if config.evaluation else None
        return cls(calibration, evaluation)


class Reference:
    """Eager outputs for the parity cases and the eager task metric, each computed once."""

    def __init__(
        self,
        config: KilnConfig,
        bundle: ExportBundle,
        module: Any | None,
        data: BuildData,
        baseline: Reference | None = None,
    ) -> None:
        # ``module`` is the eager model; ``None`` for an ONNX source (ONNX Runtime fp32 is then the
        # reference). A pruned variant is gated for parity against its own eager model, but its
        # task metric drop is measured against the dense model (the baseline).
        self.config, self.bundle, self.module, self.data, self.baseline = config, bundle, module, data, baseline
        self._runner: Runner | None = None
        self._cases: list[tuple[Arrays, Arrays]] | None = None
        self._real_cases: list[tuple[Arrays, Arrays]] | None = None
        self._metric: float | None = None
        self._generation: GenerationReference | None = None

    def runner(self) -> Runner:
        if self._runner is None:
            options = RunOptions(threads=self.config.bench.threads)
            if self.module is None:
                from kiln.capture.exporters import ONNX
                from kiln.targets import implementation
                from kiln.targets.base import Artifact

                source = Artifact("onnxruntime", "fp32", self.bundle.path, ONNX, self.bundle.signature)
                self._runner = implementation("onnxruntime").load(source, options)
            else:
                from kiln.targets.eager import TorchRunner

                self._runner = TorchRunner(self.module, self.bundle.signature, options)
        return self._runner

    def cases(self) -> list[tuple[Arrays, Arrays]]:
        if self._cases is None:
            sig = self.bundle.signature
            inputs = [random_inputs(sig, point, seed=i) for i, point in enumerate(parity_points(sig))]
            if self.data.calibration is not None:
                inputs += self.data.calibration.samples[:CALIBRATION_CASES]
            runner = self.runner()
            self._cases = [(x, runner.infer(x)) for x in inputs]
        return self._cases

    def real_cases(self) -> list[tuple[Arrays, Arrays]]:
        """The calibration cases and every evaluation batch: parity on real data only."""
        if self._real_cases is None:
            seeded = len(parity_points(self.bundle.signature))
            evalset = self.data.evaluation
            runner = self.runner()
            extra = [(x, runner.infer(x)) for x, _ in evalset.batches] if evalset is not None else []
            self._real_cases = self.cases()[seeded:] + extra
        return self._real_cases

    @property
    def primary(self) -> str:
        """The output the task reads: top-1 applies to it when it holds class scores."""
        evalset = self.data.evaluation
        return (evalset.output if evalset is not None else None) or self.bundle.signature.outputs[0]

    def golden_cases(self, real_data: bool, real_samples: int = 2) -> list[tuple[str, str, Arrays, Arrays]]:
        """The gate's own cases as ``(kind, label, inputs, eager outputs)``, for the golden set
        (:mod:`kiln.gate.golden` screens and picks): on real data only the calibration samples and
        the first ``real_samples`` evaluation batches; else the seeded cases too."""
        sig = self.bundle.signature
        points = parity_points(sig)
        cases = self.cases()
        seeded = [("seeded", f"seeded at the dims' {p}", x, y) for p, (x, y) in zip(points, cases, strict=False)]
        calibration = [
            ("calibration", f"calibration sample {i}", x, y) for i, (x, y) in enumerate(cases[len(points) :])
        ]
        evalset = self.data.evaluation
        if self._real_cases is not None:  # the gate ran eager on them already
            done = self._real_cases[len(calibration) : len(calibration) + real_samples]
        else:
            batches = evalset.batches[:real_samples] if evalset is not None else []
            done = [(x, self.runner().infer(x)) for x, _ in batches]
        evaluation = [("evaluation", f"evaluation batch {i}", x, y) for i, (x, y) in enumerate(done)]
        if real_data and self.data.calibration is not None:
            return calibration + evaluation
        return seeded + calibration[:real_samples] + evaluation[:1]

    def golden_prompts(self) -> EagerGeneration:
        """A causal LM's gate prompts with eager's answers, and the held-out text."""
        return self.generation().eager

    def metric(self) -> float | None:
        evalset = self.data.evaluation
        if evalset is not None and self._metric is None:
            self._metric = evaluate(self.runner().infer, evalset, self.config.root)
        return self._metric

    def generation(self) -> GenerationReference:
        if self._generation is None:
            self._generation = GenerationReference.compute(self.config, self.bundle, self.runner())
        return self._generation

    def check(self, runner: Runner, tolerance: Tolerance, real_data: bool) -> Gate:
        """Parity figures and the task metric of one artifact, with the gate's verdict.
        ``real_data``: the precision fixed its activation ranges from calibration data, so parity
        is measured on the calibration and evaluation inputs only. A causal LM is gated on what
        it generates (:class:`GenerationReference`), and where kiln carries its cache, on the
        step graph at the dims' min, opt and max too."""
        if self.bundle.signature.generative:
            gate = self.generation().check(runner, tolerance)
            if runner.decode_session(self.bundle.signature) is not None:
                return gate  # the runtime keeps the cache: there is no step graph to feed
            # Seeded ids over a random cache take the model where no prompt does: there a real
            # model's fp32 rounding reads far above what it is on real prompts (SmolLM2-135M: logits
            # max_rel 4.2e-4 and its last layers' cache 1.9e-4, where its teacher-forced logits sit
            # at 3e-6 of their scale; docs/generative.md). So the step graph gates what a random cache
            # does show, shapes, non-finite values and cosine, for a precision that must match eager
            # exactly (fp32), with max_abs and max_rel recorded; how close the logits are is judged
            # on real prompts, teacher-forced (kiln.gate.verdict). Other precisions: recorded only.
            step = self._parity_gate(runner, tolerance.model_copy(update={"max_abs": None, "max_rel": None}), False)
            gated = step.breaches if tolerance.exact_tokens else []
            breaches = [*gated, *gate.breaches]
            return gate.model_copy(update={"passed": not breaches, "parity": step.parity, "breaches": breaches})
        return self._parity_gate(runner, tolerance, real_data)

    def _parity_gate(self, runner: Runner, tolerance: Tolerance, real_data: bool) -> Gate:
        evalset = self.data.evaluation
        report = ParityReport(tolerance, primary=self.primary, classifiers=tuple(self.config.model.class_outputs))
        real = real_data and self.data.calibration is not None
        for inputs, expected in self.real_cases() if real else self.cases():
            report.add_case(runner.infer(inputs), expected, inputs)
        seeded = "seeded + calibration" if self.data.calibration is not None else "seeded"
        parity = report.result("calibration + evaluation (real data)" if real else seeded)
        breaches = list(parity.breaches)
        evaluation = None
        if evalset is not None:
            reference = (self.baseline or self).metric()
            assert reference is not None
            value = evaluate(runner.infer, evalset, self.config.root)
            drop = metric_drop(evalset.metric, reference, value)
            limit = self.config.gates.max_metric_drop
            evaluation = EvaluationResult(
                metric=evalset.metric,
                samples=evalset.count,
                eager=reference,
                value=value,
                drop=drop,
                max_drop=limit,
                pruned_eager=self.metric() if self.baseline is not None else None,
            )
            if limit is not None and drop > limit:
                breaches.append(
                    f"metric {evalset.metric!r} dropped {drop:.4g} vs eager ({reference:.4g} -> {value:.4g}), "
                    f"over [gates].max_metric_drop = {limit:.4g} (max_metric_drop = {drop:.4g} would pass)"
                )
        return Gate(passed=not breaches, parity=parity, evaluation=evaluation, breaches=breaches)


# Used when [generation] gives no prompts or held-out text (a model with a tokenizer).
PROMPTS = ("def main():\n    ", "The quick brown fox", "import os\nimport sys\n\n")
HELDOUT = """Release engineers ship models to many runtimes. Each runtime has its own graph format,
its own kernels and its own ideas about numeric precision, so a model that is right in PyTorch can
be subtly wrong on a device. The only proof is to run the artifact and compare what it produces
with the model it came from, on the inputs that matter, with tolerances that fit the precision.
For a language model the inputs that matter are prompts, and what the user sees is text: the gate
therefore decodes, token by token, and scores held-out text, rather than comparing one tensor."""


class GenerationReference:
    """Eager's greedy tokens, teacher-forced logits and held-out perplexity, computed once per
    build; every artifact of a causal LM is judged against them by :mod:`kiln.gate.verdict`."""

    def __init__(self, sig: Signature, eager: EagerGeneration) -> None:
        self.sig, self.eager = sig, eager

    @classmethod
    def compute(cls, config: KilnConfig, bundle: ExportBundle, eager: Runner) -> GenerationReference:
        """Decode the gate's prompts and score the held-out text on the eager model."""
        sig, spec = bundle.signature, config.generation
        tokenizer = Tokenizer(bundle.tokenizer_dir) if bundle.tokenizer_dir is not None else None
        context = sig.context_length()
        misfit = context_misfit(1, spec.new_tokens, context)  # not even a one-token prompt fits
        if misfit is not None:
            raise ContextError(f"[generation].new_tokens = {spec.new_tokens}: {misfit}")
        room = prompt_room(spec.new_tokens, context)
        assert sig.cache is not None
        vocab = sig.cache.vocab_size
        labels, prompts = _prompts(config, tokenizer, room, vocab)
        heldout = _heldout(config, tokenizer, vocab)[: min(spec.heldout_tokens, 4 * context)]
        session = session_for(eager, sig)
        try:
            cases = []
            for i, (label, ids) in enumerate(zip(labels, prompts, strict=True)):
                tokens = list(generate(session, ids, spec.new_tokens))
                cases.append(GenerationCase(f"prompt {i}", label, ids, tokens, forced(session, ids, tokens)))
            return cls(sig, EagerGeneration(cases, Heldout(heldout, perplexity(session, heldout))))
        finally:
            session.close()

    def check(self, runner: Runner, tolerance: Tolerance) -> Gate:
        """The generation verdict on one artifact (:func:`kiln.gate.verdict.measure`)."""
        session = session_for(runner, self.sig)
        try:
            result = measure(session, self.eager, tolerance, "generation")
        finally:
            session.close()
        return Gate(passed=result.passed, generation=result, breaches=list(result.breaches))


def _read_lines(config: KilnConfig, ref: str) -> list[str]:
    from kiln.errors import ConfigError

    path = config.root / ref
    if not path.is_file():
        raise ConfigError(f"[generation] file {path} does not exist; give a text file or a list of prompts")
    return path.read_text().splitlines()


def _prompts(
    config: KilnConfig, tokenizer: Tokenizer | None, room: int, vocab: int
) -> tuple[list[str], list[list[int]]]:
    """The gate's prompts as (labels, token ids): text through the tokenizer, else seeded ids."""
    given = config.generation.prompts
    texts = _read_lines(config, given) if isinstance(given, str) else list(given or [])
    texts = [t.replace("\\n", "\n") for t in texts if t.strip()]
    if tokenizer is None:
        if texts:
            from kiln.errors import ConfigError

            raise ConfigError(
                "[generation].prompts are text but this model has no tokenizer; set [generation].tokenizer "
                "to a tokenizer folder (tokenizer.json)"
            )
        rng = np.random.default_rng(0)
        ids = [rng.integers(0, vocab, 8).tolist()[-room:] for _ in range(3)]
        return [f"seeded ids {i}" for i in range(len(ids))], ids
    texts = texts or list(PROMPTS)
    chat = config.generation.chat
    if chat if chat is not None else tokenizer.has_chat_template:
        ids = [tokenizer.encode_chat([{"role": "user", "content": t}])[-room:] for t in texts]
        return [f"chat: {t[:54]}" for t in texts], ids
    return [t[:60] for t in texts], [tokenizer.encode(t)[-room:] for t in texts]


def _heldout(config: KilnConfig, tokenizer: Tokenizer | None, vocab: int) -> list[int]:
    ref = config.generation.heldout
    text = "\n".join(_read_lines(config, ref)) if ref else HELDOUT
    if tokenizer is None:
        return np.random.default_rng(1).integers(0, vocab, 256).tolist()
    return tokenizer.encode(text)
