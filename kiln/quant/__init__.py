"""What every quantizer shares: the refusal to calibrate without data and the too-few-samples
warning.

Each toolchain's own quantization lives next to the one target it serves
(``kiln.targets.onnxruntime.quantize``, ``kiln.targets.openvino.quantize``); what more than one
target uses stays here: ONNX Runtime's calibration reader and pre-processing (:mod:`kiln.quant.ort`,
for the ONNX Runtime target and TensorRT's Q/DQ ONNX) and the PT2E flow (:mod:`kiln.quant.pt2e`,
with the quantizer passed in by the target). Nothing here imports a target: functions take the
calibration set, the names and the sample guidance as parameters.
"""

from __future__ import annotations

import warnings

from kiln.data import CalibrationSet
from kiln.errors import ConfigError, KilnWarning


class CalibrationWarning(KilnWarning):
    """The calibration set is usable but smaller than a quantizer's own guidance."""


def warn_few_samples(calibration: CalibrationSet, guidance: int, who: str) -> str | None:
    """Warn (and return the message for the manifest) when fewer samples than ``guidance``."""
    count = len(calibration.samples)
    if count >= guidance:
        return None
    message = (
        f"{who}: calibrating on {count} samples, fewer than the {guidance} this quantizer's guidance asks for; "
        "ranges may be unrepresentative: raise [calibration].samples or add data"
    )
    warnings.warn(message, CalibrationWarning, stacklevel=2)
    return message


def require_calibration(
    calibration: CalibrationSet | None, precision: str, who: str, guidance: int | None
) -> tuple[CalibrationSet, list[str]]:
    """The calibration set for a static quantizer, or a clear refusal: kiln never calibrates on
    made-up inputs, because random noise gives activation ranges unrelated to real data. Also
    returns the notes for the manifest (a set smaller than the quantizer's ``guidance``, the
    sample count its registry row gives; ``who`` names the target and quantizer)."""
    if calibration is None:
        raise ConfigError(
            f"static {precision} quantization needs calibration data and the config has no "
            "[calibration]; add [calibration] source = 'data.npz' | 'folder/' | 'file.py:fn' "
            "(kiln never calibrates on random inputs), or pick a weight-only or dynamic precision"
        )
    note = warn_few_samples(calibration, guidance, who) if guidance else None
    return calibration, [note] if note else []
