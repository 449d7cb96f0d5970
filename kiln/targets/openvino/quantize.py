"""NNCF on OpenVINO IR, fed by kiln's calibration and evaluation sets.

Toolchain: nncf 3.4 with openvino 2026.4.

- ``int8``: ``nncf.quantize`` (8-bit weights and activations). ``model_type=TRANSFORMER`` is set
  when the graph has attention (a Softmax fed by a MatMul); ``options.model_type`` =
  ``"transformer"`` | ``"none"`` overrides the detection, ``options.preset`` = ``"performance"``
  (symmetric) | ``"mixed"`` (asymmetric activations), ``options.fast_bias_correction``, and
  ``options.range_estimator``: ``"minmax"`` (kiln's default: the extremes seen in calibration) |
  ``"nncf"`` (NNCF's default, ranges averaged over per-sample extremes). Measured: equal on
  all-MiniLM-L6-v2 (embedding cosine 0.9980 both) and digits (top-1 unchanged, parity cosine
  0.9999 vs 0.999), while NNCF's average saturated a small MLP with batch-1 calibration (min
  cosine 0.918 vs 0.9997 with minmax).
- ``options.overflow_fix``: NNCF's fix for int8 kernels that saturate (7-bit weights). kiln
  sets ``"enable"`` (every Conv and MatMul) where the build host has no VNNI int8 dot product,
  since NNCF's default (``"first_layer"``) left a two-layer MLP at cosine 0.91 on an AVX2-only
  host (:mod:`kiln.quant.saturation`); elsewhere NNCF's default stands.
- With an evaluation set and ``[gates].max_metric_drop``: ``nncf.quantize_with_accuracy_control``
  keeps the layers that cost most accuracy in floating point until the drop fits, measured with
  kiln's own metric (``options.accuracy_control = false`` turns it off).
- ``int8-weights`` / ``int4``: ``nncf.compress_weights`` (weight-only), in
  :mod:`kiln.targets.openvino.compress`.

The options are typed and checked in :class:`kiln.targets.openvino.options.OpenVINOOptions`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kiln.errors import ConfigError, TargetBuildError, error_line
from kiln.quant import require_calibration
from kiln.targets.base import CompileContext
from kiln.targets.openvino.options import OpenVINOOptions


def has_attention(model: Any) -> bool:
    """A Softmax whose input comes (through at most a few elementwise ops) from a MatMul."""
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Softmax":
            continue
        frontier, depth = [op], 0
        while frontier and depth < 4:
            parents = [v.get_node() for node in frontier for v in node.input_values()]
            if any(p.get_type_name() == "MatMul" for p in parents):
                return True
            frontier = [p for p in parents if p.get_type_name() in ("Add", "Multiply", "Divide", "Select", "Convert")]
            depth += 1
    return False


def _dataset(samples: list[dict[str, Any]], names: list[str]) -> Any:
    import nncf

    return nncf.Dataset([{n: s[n] for n in names} for s in samples])


def _quiet_nncf() -> None:
    """NNCF logs every validation and statistics pass at INFO and resets its level on import;
    kiln's own summary reports the outcome. ``kiln --verbose`` keeps NNCF's log."""
    import logging
    import os

    import nncf

    if not os.environ.get("KILN_VERBOSE"):
        nncf.set_log_level(logging.WARNING)


def quantize(ctx: CompileContext, model: Any) -> tuple[Any, dict[str, Any]]:
    """The compressed model and what was done, for the manifest."""
    _quiet_nncf()
    try:
        if ctx.precision == "int8":
            return _quantize(ctx, model)
        from kiln.targets.openvino.compress import compress

        return compress(ctx, model)
    except (ConfigError, TargetBuildError):
        raise
    except Exception as err:  # NNCF raises its own and plain Python errors alike
        raise TargetBuildError(
            f"NNCF failed: {error_line(err)}; "
            "try options.model_type, another preset, or another precision; --verbose shows the trace"
        ) from err


def _quantize(ctx: CompileContext, model: Any) -> tuple[Any, dict[str, Any]]:
    import nncf

    options: OpenVINOOptions = ctx.options
    calibration, notes = require_calibration(
        ctx.calibration, ctx.precision, f"{ctx.target.key} (nncf)", ctx.calibration_guidance
    )
    names = [i.get_any_name() for i in model.inputs]
    detected = has_attention(model)
    kind = options.model_type or ("transformer" if detected else "none")
    preset = options.preset or ("mixed" if kind == "transformer" else "performance")
    args: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        "subset_size": len(calibration.samples),
        "fast_bias_correction": options.fast_bias_correction,
    }
    if kind == "transformer":
        args["model_type"] = nncf.ModelType.TRANSFORMER
    estimator = options.range_estimator
    fix, why = overflow_fix(options.overflow_fix)
    args["advanced_parameters"] = advanced(fix, minmax=estimator == "minmax")
    dataset = _dataset(calibration.samples, names)
    info: dict[str, Any] = {
        "tool": "nncf.quantize",
        "model_type": kind,
        "attention_detected": detected,
        "preset": preset,
        "range_estimator": estimator,
        "overflow_fix": fix,
        "overflow_fix_why": why,
        "calibration_samples": len(calibration.samples),
    }
    if options.accuracy_control and ctx.evaluation is not None and ctx.max_metric_drop is not None:
        quantized = _with_accuracy_control(ctx, model, dataset, args)
        info.update(tool="nncf.quantize_with_accuracy_control", max_drop=ctx.max_metric_drop)
    else:
        quantized = nncf.quantize(model, dataset, **args)
    return quantized, {"execution_precision": "int8", "quantization": info, "notes": notes}


def overflow_fix(option: str | None) -> tuple[str, str]:
    """NNCF's overflow fix to use and why: the option, else ``enable`` on a saturating host."""
    from kiln.quant.saturation import decide

    if option is not None:
        return option, "set in options"
    applied, why = decide(None)
    return ("enable" if applied else "first_layer"), why


def advanced(fix: str, minmax: bool = False) -> Any:
    """NNCF's AdvancedQuantizationParameters with ``fix`` and, with ``minmax``, min/max ranges."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    extra = {"activations_range_estimator_params": RangeEstimatorParametersSet.MINMAX} if minmax else {}
    nncf_fix = {"enable": OverflowFix.ENABLE, "first_layer": OverflowFix.FIRST_LAYER, "disable": OverflowFix.DISABLE}
    return AdvancedQuantizationParameters(overflow_fix=nncf_fix[fix], **extra)


def _with_accuracy_control(ctx: CompileContext, model: Any, dataset: Any, args: dict[str, Any]) -> Any:
    import nncf
    import numpy as np

    from kiln.metrics import LOWER_IS_BETTER, evaluate

    evalset = ctx.evaluation
    assert evalset is not None and ctx.max_metric_drop is not None
    names = [i.get_any_name() for i in model.inputs]
    sign = -1.0 if evalset.metric in LOWER_IS_BETTER else 1.0  # NNCF wants higher-is-better

    def validate(compiled: Any, items: Any) -> float:
        request = compiled.create_infer_request()
        outputs = [o.get_any_name() for o in compiled.outputs]
        sig_outputs = ctx.export.signature.outputs or tuple(outputs)

        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            result = request.infer({n: inputs[n] for n in names})
            return {name: np.asarray(result[out]) for name, out in zip(sig_outputs, compiled.outputs, strict=False)}

        subset = dataclasses.replace(evalset, batches=list(items))
        return sign * evaluate(run, subset, ctx.root)

    args = dict(args)
    if "advanced_parameters" in args:  # the accuracy-control entry point names it differently
        args["advanced_quantization_parameters"] = args.pop("advanced_parameters")
    validation = nncf.Dataset(evalset.batches)
    return nncf.quantize_with_accuracy_control(
        model,
        calibration_dataset=dataset,
        validation_dataset=validation,
        validation_fn=validate,
        max_drop=ctx.max_metric_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        **args,
    )
