"""OpenVINO int8 by quantization-aware training: NNCF's PyTorch QAT.

Toolchain: nncf 3.4 (PyTorch backend) and openvino 2026.4. ``nncf.quantize`` on the float PyTorch
model inserts NNCF's fake quantizers with ranges from kiln's calibration set (what post-training
quantization is: its task metric is recorded beside QAT's); the model is then fine-tuned with the
quantizers in the loop (:class:`kiln.train.finetune.Recovery`: the recovery data, epochs, learning rate
and distillation of ``[recovery]``), and ``ov.convert_model`` turns it into an IR whose
FakeQuantize ops the CPU plugin runs as int8. NNCF's PyTorch quantizers run through a C++
extension it compiles on first use (90 s on 2 cores, cached under ``~/.cache/torch_extensions``);
kiln raises NNCF's 60 s limit on that compile to 15 minutes (a loaded 2-core machine exceeds 60 s),
and refuses to wait on a lock a killed compile left behind (every later load would hang on it).
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

from kiln.errors import TargetBuildError, error_line
from kiln.manifest import QatReport
from kiln.targets.base import CompileContext
from kiln.targets.openvino.quantize import advanced, overflow_fix


def nncf_qat(ctx: CompileContext, ov: Any) -> tuple[Any, QatReport, Any]:
    """The QAT-trained model converted by ``ov`` (openvino, telemetry blocked), its report, and
    the trained PyTorch model with NNCF's fake quantizers (the gate's parity reference)."""
    import torch

    from kiln.quant.qat import fit
    from kiln.targets import QAT_NNCF
    from kiln.tensors import to_tensors

    setup, sig = ctx.qat, ctx.export.signature
    assert setup is not None
    calibration = ctx.require_qat_data()
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", str(EXTENSION_TIMEOUT))
    _check_stale_lock()
    import nncf

    fix = overflow_fix(ctx.options.overflow_fix)[0]
    start = time.perf_counter()
    float_model = copy.deepcopy(setup.module).eval()
    samples = [tuple(to_tensors(sig, sample)) for sample in calibration.samples]
    try:
        setup.progress("quantization-aware training: NNCF quantizers from the calibration set")
        quantized = nncf.quantize(
            copy.deepcopy(float_model),
            nncf.Dataset(samples),
            subset_size=len(samples),
            preset=nncf.QuantizationPreset.MIXED,
            advanced_parameters=advanced(fix),
        )
    except Exception as err:  # NNCF raises its own and plain errors alike
        raise _failed(err) from err
    ptq_metric = setup.metric(quantized.eval())
    figures = fit(setup, sig, quantized, float_model)
    quantized.eval()
    qat_metric = setup.metric(quantized)
    try:
        with torch.no_grad():
            model = ov.convert_model(quantized, example_input=samples[0])
    except Exception as err:
        raise _failed(err) from err
    return model, setup.report(QAT_NNCF, figures, (ptq_metric, qat_metric), start), quantized


EXTENSION_TIMEOUT = 900  # seconds NNCF may take to compile its C++ quantizer extension


def _check_stale_lock() -> None:
    """torch's extension builder holds a ``lock`` file while it compiles; a compile killed half-way
    leaves it, and every later load waits on it forever. One older than the timeout is stale."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    for lock in root.glob("*/nncf/*/*/lock"):
        if time.time() - lock.stat().st_mtime > EXTENSION_TIMEOUT:
            raise TargetBuildError(
                f"NNCF's extension build is locked by {lock}, left by a compile that was killed; "
                f"remove {lock.parent} and build again"
            )


def _failed(err: Exception) -> TargetBuildError:
    return TargetBuildError(
        f"NNCF quantization-aware training failed: {error_line(err)}; "
        "set [recovery] qat = false for post-training int8; --verbose shows the trace"
    )
