"""Lower the captured program to ONNX with the dynamo exporter, then prove the file is right.

The exporter can silently write another opset than asked (a failed down-conversion keeps 18 with
only a log line), so the opset written is read back and compared; the file is checked with
``onnx.checker`` (full check) and always written as one file (no external data below 2 GB).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kiln.capture.exporters.torch_export import describe_failure
from kiln.errors import ExportError
from kiln.spec import Signature


def written_opset(proto: Any) -> int:
    return next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))


def check_opset(proto: Any, asked: int) -> None:
    """The exporter falls back to its native opset when a down-conversion fails, with only a
    log line: refuse a file whose opset is not the one asked for."""
    got = written_opset(proto)
    if got != asked:
        raise ExportError(
            f"ONNX export asked for opset {asked} but the exporter wrote opset {got}; "
            f"set [export] opset = {got} in the config, or find the operator that blocks opset {asked}"
        )


def name_dynamic_axes(proto: Any, sig: Signature) -> None:
    """Give every dynamic input axis the spec's dim name (the exporter may call them s0, s1)."""
    by_name = {spec.name: spec for spec in sig.inputs}
    for value in proto.graph.input:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        for axis, dim in zip(value.type.tensor_type.shape.dim, spec.shape, strict=False):
            if isinstance(dim, str) and not sig.dim(dim).static:
                axis.ClearField("dim_value")
                axis.dim_param = dim


def to_onnx(program: Any, args: tuple[Any, ...], sig: Signature, path: Path, opset: int) -> Any:
    """Export ``program`` to ``path`` and return the checked ``ModelProto``."""
    import onnx
    import torch

    # The exporter logs its progress at WARNING through several loggers; kiln reports its own.
    for name in ("torch.onnx", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        onnx_program = torch.onnx.export(
            program,
            args,
            input_names=sig.input_names,
            output_names=list(sig.outputs),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    except Exception as err:
        raise describe_failure(
            "ONNX export (dynamo exporter)",
            err,
            "try another [export] opset, or target aoti/eager which need no ONNX; --verbose shows the trace",
        ) from err
    if onnx_program is None:
        raise ExportError("ONNX export returned nothing; run with --verbose and report the model")
    proto = onnx_program.model_proto
    name_dynamic_axes(proto, sig)
    check_opset(proto, opset)
    if proto.ByteSize() >= 2**31:
        raise ExportError("model is over 2 GB: ONNX needs external data, which kiln does not write yet")
    onnx.save_model(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:
        raise ExportError(f"the exported ONNX fails onnx.checker: {err}; report the model") from err
    return proto
