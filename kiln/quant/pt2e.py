"""PyTorch's own int8 flow for AOTInductor: PT2E with the x86 Inductor quantizer.

Toolchain: torch 2.13 + torchao 0.18. torch 2.13 no longer ships ``torch.ao.quantization``'s PT2E
entry points (``quantize_pt2e``, ``quantizer.x86_inductor_quantizer``); they live in torchao
(``torchao.quantization.pt2e``), installed with ``pip install 'kiln[aoti-int8]' -c constraints.txt``.

The captured program is annotated (``X86InductorQuantizer``: static, per-channel symmetric int8
weights, uint8 activations), observed on
kiln's calibration samples, converted to quantize/dequantize pairs, re-captured with the spec's
dynamic dims, and compiled with Inductor's freezing on, which folds the pairs into oneDNN int8
kernels (``onednn.qconv``/``qlinear``).
"""

from __future__ import annotations

from typing import Any

from kiln.data import SAMPLE_GUIDANCE
from kiln.errors import TargetBuildError
from kiln.quant import require_calibration
from kiln.targets.base import CompileContext

PACKAGE = "torchao"


def quantize(ctx: CompileContext) -> tuple[Any, dict[str, Any]]:
    """An ExportedProgram with int8 quantize/dequantize pairs, ready for AOTInductor."""
    import torch

    from kiln.exporters.torch_export import capture, example_inputs
    from kiln.targets.eager import to_tensors

    calibration, notes = require_calibration(ctx, "pt2e", SAMPLE_GUIDANCE["pt2e"])
    quantizer_mod, flow = _toolchain()
    quantizer = quantizer_mod.X86InductorQuantizer()
    quantizer.set_global(quantizer_mod.get_default_x86_inductor_quantization_config())
    sig = ctx.export.signature
    try:
        prepared = flow.prepare_pt2e(ctx.export.program().module(), quantizer)
        with torch.no_grad():
            for sample in calibration.samples:
                prepared(*to_tensors(sig, sample))
        converted = flow.convert_pt2e(prepared)
    except Exception as err:  # torchao raises plain Python errors from deep inside the graph passes
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise TargetBuildError(
            f"PT2E quantization failed: {type(err).__name__}: {first}; "
            "build onnxruntime:int8 or openvino:int8 instead; --verbose shows the trace"
        ) from err
    program = capture(converted, example_inputs(sig, None), sig, strict=False)
    info = {
        "execution_precision": "int8",
        "quantization": {
            "tool": "torchao.quantization.pt2e (X86InductorQuantizer)",
            "weights": "int8 per-channel",
            "activations": "uint8",
            "calibration_samples": len(calibration.samples),
        },
        "notes": notes,
    }
    return program, info


def _toolchain() -> tuple[Any, Any]:
    import logging

    from kiln.errors import MissingDependencyError

    # torchao's import logs a warning per CUDA-only extension it cannot load (none matter on a
    # CPU) and torch warns about an enum torchao registers; neither is actionable.
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        import torchao.quantization.pt2e.quantize_pt2e as flow
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as quantizer_mod
    except ImportError as err:
        raise MissingDependencyError(
            "aoti:int8 needs torchao (torch 2.13 moved PT2E quantization there); "
            "pip install 'kiln[aoti-int8]' -c constraints.txt"
        ) from err
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    return quantizer_mod, flow


def int8_kernels(package_dir: Any) -> int:
    """How many oneDNN int8 kernel calls the compiled package's generated code makes."""
    import zipfile

    calls = 0
    with zipfile.ZipFile(package_dir) as zf:
        for name in zf.namelist():
            if name.endswith((".cpp", ".wrapper.cpp", ".h")):
                text = zf.read(name).decode(errors="ignore")
                calls += text.count("qconv") + text.count("qlinear")
    return calls
