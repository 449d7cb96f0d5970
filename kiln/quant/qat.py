"""Quantization-aware training: fine-tune with fake quantization in the loop, on each target's own
quantizer, with the recovery data, epochs, learning rate and distillation pruning uses.

Two flows, both starting from the float eager model (the build's reference, after any
distillation) and both measuring post-training quantization on the same quantizer beside QAT, so
the manifest holds PTQ's and QAT's task metric side by side:

- :func:`pt2e_qat`: torchao's PT2E. The model is captured, ``prepare_qat_pt2e`` inserts fake
  quantizers where the target's quantizer asks (AOTInductor: ``X86InductorQuantizer``; ExecuTorch:
  ``XNNPACKQuantizer``; ONNX Runtime and TensorRT: the quantizer of their Q/DQ ONNX), the model
  is trained in its exported form (``move_exported_model_to_train/eval`` switch batch norm and
  dropout, which ``.train()`` cannot on a graph), ``convert_pt2e`` turns the fake quantizers into
  quantize/dequantize pairs, and the program is captured again with the spec's dynamic dims. For
  ONNX targets :func:`qdq_onnx` exports it with the dynamo exporter: ``QuantizeLinear`` /
  ``DequantizeLinear`` pairs the runtime fuses into integer kernels.
- NNCF's PyTorch QAT, for OpenVINO, lives with that target (:mod:`kiln.targets.openvino.qat`).

Toolchain: torch 2.13, torchao 0.18 (``torchao.quantization.pt2e``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.config import RecoveryConfig
from kiln.data import CalibrationSet
from kiln.errors import DataError, TargetBuildError, error_line
from kiln.manifest import QatReport
from kiln.quant.pt2e import FLOW, load_torchao
from kiln.spec import Signature

UTILS = "torchao.quantization.pt2e"
INSTALL = "pip install torchao -c constraints.txt"


@dataclass(frozen=True)
class QatSetup:
    """What a quantized target needs for QAT, handed over by the build."""

    module: Any  # the float eager model; each target trains its own copy
    recovery: RecoveryConfig
    root: Path
    teacher: Any = None  # [recovery].teacher's module; else the float model teaches (distill = true)
    evaluate: Callable[[Any], float] | None = None  # the task metric of a PyTorch module
    progress: Callable[[str], None] = field(default=lambda _: None)

    @property
    def epochs(self) -> int:
        return self.recovery.qat_epochs or self.recovery.epochs

    def trainer(self, sig: Signature, float_model: Any) -> Any:
        from kiln.train.finetune import Recovery

        teacher = (self.teacher or float_model) if self.recovery.distill else None
        return Recovery(self.recovery, sig, self.root, teacher, self.progress)

    def metric(self, module: Any) -> float | None:
        return round(float(self.evaluate(module)), 6) if self.evaluate is not None else None

    def distilled_from(self) -> str | None:
        if not self.recovery.distill:
            return None
        return self.recovery.teacher or "the float model"

    def report(
        self, path: str, figures: dict[str, Any], metrics: tuple[float | None, float | None], start: float
    ) -> QatReport:
        """The manifest's ``qat`` record: the path, the training's figures, PTQ's and QAT's metric."""
        return QatReport(
            path=path,
            epochs=figures["epochs"],
            loss_first=figures["loss_first"],
            loss_final=figures["loss_final"],
            lr=self.recovery.lr,
            distilled_from=self.distilled_from(),
            ptq_metric=metrics[0],
            qat_metric=metrics[1],
            seconds=round(time.perf_counter() - start, 2),
        )


def fit(
    setup: QatSetup, sig: Signature, model: Any, float_model: Any, modes: tuple[Any, Any] | None = None
) -> dict[str, Any]:
    """Train ``model`` (with its fake quantizers) for the QAT epochs; one line on a batch the
    capture's dims do not admit.

    QAT here adapts the trained weights to the quantization grid, it does not retrain: the model
    trains in eval mode (batch norm's statistics frozen, dropout off), as PyTorch's QAT recipe
    freezes batch norm for the last epochs. Measured on MiniLM (3 epochs, lr 1e-5): with
    dropout on, the loss is mostly dropout's noise and QAT lowered the embedding cosine from
    PTQ's 0.9936 to 0.9717."""
    trainer = setup.trainer(sig, float_model)
    modes = modes or (_eval, _eval)
    try:
        return trainer.fit(model, epochs=setup.epochs, label="quantization-aware training", modes=modes)
    except (RuntimeError, ValueError) as err:  # a guard of the captured graph: a batch outside the dims
        if "shape" not in str(err) and "guard" not in str(err).lower():
            raise
        why = error_line(err, 200, typed=False)
        raise DataError(
            f"quantization-aware training: a recovery batch does not fit the model's dims ({why}); "
            "yield batches within [model].dims (at most each dim's max rows)"
        ) from err


def _eval(module: Any) -> Any:
    return module.eval()


def pt2e_qat(
    setup: QatSetup,
    sig: Signature,
    calibration: CalibrationSet,
    quantizer: Callable[[bool], Any],
    path: str,
) -> tuple[Any, QatReport]:
    """The QAT-trained program (quantize/dequantize pairs, captured with the spec's dims: its
    module is also the gate's parity reference, the trained model in int8 numerics) and its
    report, with the task metric of PTQ on the same quantizer (``quantizer(is_qat)`` gives the
    target's quantizer configured for one or the other)."""
    import torch

    from kiln.capture.exporters.torch_export import capture, example_inputs
    from kiln.tensors import to_tensors

    flow = load_torchao(FLOW, "quantization-aware training", INSTALL)
    utils = load_torchao(UTILS, "quantization-aware training", INSTALL)
    start = time.perf_counter()
    float_model = copy.deepcopy(setup.module).eval()
    args = example_inputs(sig, None)
    try:
        ptq = flow.prepare_pt2e(capture(copy.deepcopy(float_model), args, sig, strict=False).module(), quantizer(False))
        with torch.no_grad():
            for sample in calibration.samples:
                ptq(*to_tensors(sig, sample))
        ptq_metric = setup.metric(flow.convert_pt2e(ptq))
        setup.progress("quantization-aware training: inserting fake quantizers")
        prepared = flow.prepare_qat_pt2e(
            capture(copy.deepcopy(float_model), args, sig, strict=False).module(), quantizer(True)
        )
    except Exception as err:  # torchao raises plain Python errors from deep inside its passes
        raise _failed(err) from err
    # Ranges first: the fake quantizers observe the calibration set (as PTQ's observers do), then
    # stay fixed while the weights learn to live on that grid (PyTorch's QAT recipe freezes the
    # observers after a warm-up; fixing them from calibration is that with the warm-up on
    # calibration data, and it keeps an outlier batch from widening a range mid-training).
    utils.move_exported_model_to_eval(prepared)
    with torch.no_grad():
        for sample in calibration.samples:
            prepared(*to_tensors(sig, sample))
    prepared.apply(utils.disable_observer)
    figures = fit(setup, sig, prepared, float_model, (utils.move_exported_model_to_eval,) * 2)
    utils.move_exported_model_to_eval(prepared)
    qat_metric = setup.metric(prepared)
    try:
        converted = flow.convert_pt2e(prepared)
    except Exception as err:
        raise _failed(err) from err
    report = setup.report(path, figures, (ptq_metric, qat_metric), start)
    return capture(converted, example_inputs(sig, None), sig, strict=False), report


def _failed(err: Exception) -> TargetBuildError:
    return TargetBuildError(
        f"quantization-aware training failed: {error_line(err)}; "
        "set [recovery] qat = false to quantize after training instead; --verbose shows the trace"
    )


def qdq_onnx(program: Any, sig: Signature, path: Path, opset: int) -> None:
    """The QAT program as an ONNX of QuantizeLinear/DequantizeLinear pairs (the dynamo exporter
    lowers torch's quantize/dequantize ops to them), checked to hold them."""
    import onnx

    from kiln.capture.exporters.onnx import to_onnx
    from kiln.capture.exporters.torch_export import example_inputs

    to_onnx(program, example_inputs(sig, None), sig, path, opset)
    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
        raise TargetBuildError(
            f"the QAT model exported to ONNX without Q/DQ pairs (ops: {sorted(ops)[:12]}); "
            "set [recovery] qat = false to quantize the ONNX after training instead"
        )


def histogram_ranges(config: Any) -> Any:
    """A QAT config whose activation fake quantizers take their ranges with a histogram, as
    post-training quantization's observers do. The QAT defaults track min/max, which an outlier
    (a transformer's few huge hidden channels) stretches until every other value falls in a
    handful of levels: measured on MiniLM, the fake-quantized model then starts training at a
    hidden-state MSE of 0.23 where PTQ's histogram ranges give 0.99 embedding cosine; QAT could not
    win that back in 3 epochs. The ranges are fixed from calibration before training (see
    :func:`pt2e_qat`), so the histogram's cost is paid once."""
    import dataclasses

    pt2e = load_torchao(UTILS, "quantization-aware training", INSTALL)
    ctr = pt2e.FakeQuantize.with_args(observer=pt2e.HistogramObserver, eps=2**-12)

    def swap(spec: Any) -> Any:
        if spec is None or getattr(spec, "is_dynamic", False):
            return spec
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=ctr)

    return dataclasses.replace(
        config, input_activation=swap(config.input_activation), output_activation=swap(config.output_activation)
    )


def x86_quantizer(is_qat: bool, reduce_range: bool = False) -> Any:
    """torchao's x86 quantizer in its default configuration: uint8 activations per tensor,
    int8 weights per channel (what AOTInductor fuses, and ONNX Runtime's preferred U8S8);
    ``reduce_range``: activations in 0..127, so u8 x s8 pairs cannot saturate an int16
    (:mod:`kiln.quant.saturation`)."""
    x86 = load_torchao("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer", "PT2E quantization", INSTALL)
    quantizer = x86.X86InductorQuantizer()
    config = x86.get_default_x86_inductor_quantization_config(is_qat=is_qat, reduce_range=reduce_range)
    quantizer.set_global(histogram_ranges(config) if is_qat else config)
    return quantizer


def symmetric_quantizer(is_qat: bool) -> Any:
    """The x86 quantizer's patterns with symmetric int8 activations (zero point 0), as
    TensorRT's explicit quantization requires, and int8 symmetric per-channel weights."""
    import torch

    x86 = load_torchao("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer", "PT2E quantization", INSTALL)
    base = x86.get_default_x86_inductor_quantization_config(is_qat=is_qat)
    act = base.input_activation
    symmetric = type(act)(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_symmetric,
        is_dynamic=False,
        observer_or_fake_quant_ctr=act.observer_or_fake_quant_ctr,
    )
    config = type(base)(symmetric, symmetric, base.weight, base.bias, is_qat)
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(histogram_ranges(config) if is_qat else config)
    return quantizer
