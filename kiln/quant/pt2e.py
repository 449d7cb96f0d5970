"""PyTorch's own quantization flow, PT2E, with the quantizer passed in by the target.

Toolchain: torch 2.13 + torchao 0.18. torch 2.13 no longer ships ``torch.ao.quantization``'s PT2E
entry points (``quantize_pt2e``, the quantizers); they live in torchao
(``torchao.quantization.pt2e``). The captured program's module is annotated by the target's
quantizer (AOTInductor: ``X86InductorQuantizer``; an ExecuTorch target: ``XNNPACKQuantizer``),
observed on kiln's calibration samples, converted to quantize/dequantize pairs and re-captured
with the spec's dynamic dims; what the target's compiler does with the pairs is its own business.
"""

from __future__ import annotations

import logging
from typing import Any

from kiln.errors import MissingDependencyError, TargetBuildError, error_line
from kiln.spec import Arrays, Signature

FLOW = "torchao.quantization.pt2e.quantize_pt2e"


def load_torchao(module: str, needed_by: str, install: str) -> Any:
    """A torchao module, imported quietly, or the exit-5 error naming who needs it and how to
    install it. torchao's import logs a warning per CUDA-only extension it cannot load (none
    matter on a CPU) and torch warns about an enum torchao registers; neither is actionable."""
    import importlib

    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{needed_by} needs torchao (torch 2.13 moved PT2E quantization there); {install}"
        ) from err
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def quantize(program: Any, sig: Signature, samples: list[Arrays], quantizer: Any) -> Any:
    """``program`` (an ExportedProgram) with the quantize/dequantize pairs ``quantizer`` (a
    torchao PT2E quantizer, configured by the target) asks for, observed on ``samples``; returns
    the re-captured ExportedProgram."""
    import torch

    from kiln.capture.exporters.torch_export import capture, example_inputs
    from kiln.tensors import to_tensors

    flow = load_torchao(FLOW, "PT2E quantization", "pip install torchao -c constraints.txt")
    try:
        prepared = flow.prepare_pt2e(program.module(), quantizer)
        with torch.no_grad():
            for sample in samples:
                prepared(*to_tensors(sig, sample))
        converted = flow.convert_pt2e(prepared)
    except Exception as err:  # torchao raises plain Python errors from deep inside the graph passes
        raise TargetBuildError(
            f"PT2E quantization failed: {error_line(err)}; "
            "build onnxruntime:int8 or openvino:int8 instead; --verbose shows the trace"
        ) from err
    return capture(converted, example_inputs(sig, None), sig, strict=False)
