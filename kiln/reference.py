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

from kiln.config import KilnConfig, Tolerance
from kiln.data import CalibrationSet, EvaluationSet, load_calibration, load_evaluation
from kiln.exporters import ExportBundle
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

    def runner(self) -> Runner:
        if self._runner is None:
            options = RunOptions(threads=self.config.bench.threads)
            if self.module is None:
                from kiln.exporters import ONNX
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

    def metric(self) -> float | None:
        evalset = self.data.evaluation
        if evalset is not None and self._metric is None:
            self._metric = evaluate(self.runner().infer, evalset, self.config.root)
        return self._metric

    def check(self, runner: Runner, tolerance: Tolerance, real_data: bool) -> Gate:
        """Parity figures and the task metric of one artifact, with the gate's verdict.
        ``real_data``: the precision fixed its activation ranges from calibration data, so parity
        is measured on the calibration and evaluation inputs only."""
        evalset = self.data.evaluation
        primary = (evalset.output if evalset is not None else None) or self.bundle.signature.outputs[0]
        report = ParityReport(tolerance, primary=primary)
        real = real_data and self.data.calibration is not None
        for inputs, expected in self.real_cases() if real else self.cases():
            report.add_case(runner.infer(inputs), expected)
        parity = report.result("calibration + evaluation (real data)" if real else "seeded + calibration")
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
