"""Lower the captured program to ONNX with the dynamo exporter, then prove the file is right.

The exporter can silently write another opset than asked (a failed down-conversion keeps 18 with
only a log line), so the opset written is read back and compared; the file is checked with
``onnx.checker`` (full check). The weights are streamed to one external data file beside the graph
(``model.onnx.data``), tensor by tensor from the exporter's graph, which is then freed; the graph
alone is read back, named and checked (the checker's full check of a file that holds its weights
holds them all again). A graph whose weights are under ``external_above`` bytes
(:data:`EXTERNAL_DATA_ABOVE`, 256 MiB: serializing one message costs several times its size, and
protobuf cannot write one of 2 GB) then takes them back into one file; a bigger one keeps its data
file, which every consumer (ONNX Runtime, OpenVINO, TensorRT, the model repository) reads beside it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.capture.exporters.torch_export import describe_failure
from kiln.errors import ExportError
from kiln.spec import Signature

# Weights from this many bytes up stay in an external data file (a parameter of to_onnx and
# save_onnx, so that a tiny model can be made to take the path in a test). Writing one protobuf
# message costs several times its size: onnx.save_model of SmolLM2's 0.5 GB graph peaked 2.5 GB
# above the graph itself; written as external data, the weights go out tensor by tensor.
EXTERNAL_DATA_ABOVE = 256 * 2**20
DATA_SUFFIX = ".data"


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


def to_onnx(
    program: Any, args: tuple[Any, ...], sig: Signature, path: Path, opset: int, external_above: int | None = None
) -> None:
    """Export ``program`` to ``path`` (with ``path.onnx.data`` when its weights are
    ``external_above`` bytes or more; ``None``: :data:`EXTERNAL_DATA_ABOVE`) and check the file."""
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
    one_file = weights_bytes(onnx_program.model) < (EXTERNAL_DATA_ABOVE if external_above is None else external_above)
    # Written from the exporter's graph tensor by tensor (no serialized copy of the weights), the
    # graph freed, then the graph alone read back, named and checked.
    onnx_program.save(str(path), external_data=True)
    del onnx_program
    gc.collect()
    proto = onnx.load(str(path), load_external_data=False)
    name_dynamic_axes(proto, sig)
    check_opset(proto, opset)
    onnx.save_model(proto, str(path))
    del proto
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:
        raise ExportError(f"the exported ONNX fails onnx.checker: {err}; report the model") from err
    if one_file:  # small enough for one file: the weights moved into it, once checked
        data = data_files(path)
        onnx.save_model(onnx.load(str(path)), str(path))
        for name in data:
            name.unlink()
    gc.collect()


def weights_bytes(model: Any) -> int:
    """The bytes of an ``onnx_ir`` model's initializers (their values are not copied)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def data_files(path: Path) -> list[Path]:
    """The external data files an ONNX file's initializers name (none for a file that holds its
    weights); the graph alone is read."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    graph = onnx.load(str(path), load_external_data=False).graph
    names = {ExternalDataInfo(t).location for t in graph.initializer if uses_external_data(t)}
    return [path.parent / name for name in sorted(names)]


def copy_onnx(src: Path, dest: Path) -> None:
    """Copy an ONNX file with its external data files (kept under their names, which the graph
    names: ``dest`` is in another folder, under the same file name)."""
    import shutil

    shutil.copyfile(src, dest)
    for data in data_files(src):
        shutil.copyfile(data, dest.parent / data.name)


def save_onnx(proto: Any, path: Path, external_above: int | None = None) -> None:
    """Save a ``ModelProto``: with its weights in ``path.onnx.data`` beside it when the message is
    ``external_above`` bytes or more (``None``: :data:`EXTERNAL_DATA_ABOVE`; protobuf cannot write
    one of 2 GB), else as one file."""
    import onnx

    if proto.ByteSize() < (EXTERNAL_DATA_ABOVE if external_above is None else external_above):
        onnx.save_model(proto, str(path))
        return
    (path.parent / f"{path.name}{DATA_SUFFIX}").unlink(missing_ok=True)  # onnx appends to it
    data = path.parent / f"{path.name}{DATA_SUFFIX}"
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    # onnx creates the data file readable by its owner alone; it ships like the graph beside it.
    data.chmod(path.stat().st_mode & 0o777)


@contextlib.contextmanager
def beside(path: Path) -> Iterator[None]:
    """Work in the folder of the ONNX file ``path``: a graph loaded without its external data
    names each tensor's file relative to it, and ONNX's and ONNX Runtime's tools read such a tensor
    relative to the working folder. Paths given inside must be absolute."""
    before = os.getcwd()
    os.chdir(path.resolve().parent)
    try:
        yield
    finally:
        os.chdir(before)
