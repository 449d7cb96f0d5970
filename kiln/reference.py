"""The eager reference every artifact is gated against, computed once per build.

The reference is the source model itself (the user's ``nn.Module``, the loaded program, or for an
ONNX source, ONNX Runtime at fp32 on the source file). Parity cases are seeded inputs at the min,
opt and max of every dim plus up to 8 calibration samples; the task metric runs on the evaluation
set when one is configured.
"""

from __future__ import annotations

from typing import Any

from kiln.config import KilnConfig, TargetConfig
from kiln.data import Arrays, CalibrationSet, EvaluationSet, load_calibration, load_evaluation
from kiln.exporters import ExportBundle
from kiln.metrics import evaluate, metric_drop
from kiln.parity import ParityReport, tolerance_for
from kiln.sources import LoadedModel
from kiln.spec import parity_points, random_inputs
from kiln.targets.base import Runner, RunOptions

CALIBRATION_CASES = 8
# Statically quantized precisions take their activation ranges from calibration data; seeded
# noise lies outside those ranges and saturates, which says nothing about the artifact. Their
# parity is measured on real inputs only: the calibration cases plus the evaluation inputs.
DATA_RANGED = {"int8", "fp8"}


class Reference:
    def __init__(
        self, config: KilnConfig, bundle: ExportBundle, loaded: LoadedModel, baseline: Reference | None = None
    ) -> None:
        self.config, self.bundle, self.loaded = config, bundle, loaded
        # A pruned variant is gated for parity against its own eager model, but its task metric
        # drop is measured against the dense model (the baseline).
        self.baseline = baseline
        self._runner: Runner | None = None
        self._calibration: CalibrationSet | None = None
        self._evaluation: EvaluationSet | None = None
        self._cases: list[tuple[Arrays, Arrays]] | None = None
        self._real_cases: list[tuple[Arrays, Arrays]] | None = None
        self._metric: float | None = None

    def runner(self) -> Runner:
        if self._runner is None:
            options = RunOptions(threads=self.config.bench.threads)
            if self.loaded.kind == "onnx":
                from kiln.targets.onnxruntime import ORTRunner

                self._runner = ORTRunner(self.bundle.onnx_path, self.bundle.signature, options)
            else:
                from kiln.targets.eager import TorchRunner

                self._runner = TorchRunner(self.loaded.module, self.bundle.signature, options)
        return self._runner

    def calibration(self) -> CalibrationSet | None:
        if self.baseline is not None:
            return self.baseline.calibration()
        if self._calibration is None and self.config.calibration is not None:
            self._calibration = load_calibration(self.config.calibration, self.bundle.signature, self.config.root)
        return self._calibration

    def evaluation(self) -> EvaluationSet | None:
        if self.baseline is not None:
            return self.baseline.evaluation()
        if self._evaluation is None and self.config.evaluation is not None:
            self._evaluation = load_evaluation(self.config.evaluation, self.bundle.signature, self.config.root)
        return self._evaluation

    def cases(self) -> list[tuple[Arrays, Arrays]]:
        if self._cases is None:
            sig = self.bundle.signature
            inputs = [random_inputs(sig, point, seed=i) for i, point in enumerate(parity_points(sig))]
            calibration = self.calibration()
            if calibration is not None:
                inputs += calibration.samples[:CALIBRATION_CASES]
            runner = self.runner()
            self._cases = [(x, runner.infer(x)) for x in inputs]
        return self._cases

    def real_cases(self) -> list[tuple[Arrays, Arrays]]:
        """The calibration cases and every evaluation batch: parity on real data only."""
        if self._real_cases is None:
            seeded = len(parity_points(self.bundle.signature))
            evalset = self.evaluation()
            runner = self.runner()
            extra = [(x, runner.infer(x)) for x, _ in evalset.batches] if evalset is not None else []
            self._real_cases = self.cases()[seeded:] + extra
        return self._real_cases

    def metric(self) -> float | None:
        evalset = self.evaluation()
        if evalset is not None and self._metric is None:
            self._metric = evaluate(self.runner().infer, evalset, self.config.root)
        return self._metric

    def check(self, runner: Runner, target: TargetConfig) -> dict[str, Any]:
        """Parity figures and the task metric of one artifact, with the gate's verdict."""
        evalset = self.evaluation()
        primary = (evalset.output if evalset is not None else None) or self.bundle.signature.outputs[0]
        report = ParityReport(tolerance_for(target.precision, target.tolerance), primary=primary)
        real = target.precision in DATA_RANGED and self.calibration() is not None
        for inputs, expected in self.real_cases() if real else self.cases():
            report.add_case(runner.infer(inputs), expected)
        gate: dict[str, Any] = {"parity": report.to_dict(), "breaches": list(report.breaches())}
        gate["parity"]["inputs"] = "calibration + evaluation (real data)" if real else "seeded + calibration"
        evalset = self.evaluation()
        if evalset is not None:
            reference = (self.baseline or self).metric()
            assert reference is not None
            value = evaluate(runner.infer, evalset, self.config.root)
            drop = metric_drop(evalset.metric, reference, value)
            limit = self.config.gates.max_metric_drop
            gate["evaluation"] = {
                "metric": evalset.metric,
                "samples": evalset.count,
                "eager": reference,
                "value": value,
                "drop": drop,
                "max_drop": limit,
            }
            if self.baseline is not None:
                gate["evaluation"]["pruned_eager"] = self.metric()
            if limit is not None and drop > limit:
                gate["breaches"].append(
                    f"metric {evalset.metric!r} dropped {drop:.4g} vs eager ({reference:.4g} -> {value:.4g}), "
                    f"over [gates].max_metric_drop = {limit:.4g} (max_metric_drop = {drop:.4g} would pass)"
                )
        gate["passed"] = not gate["breaches"]
        return gate
