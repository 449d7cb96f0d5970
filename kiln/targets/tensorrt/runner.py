"""The TensorRT runner: one engine, inputs and outputs as CUDA tensors through PyTorch (no pycuda).

One execution context per optimization profile (made when first needed), one CUDA stream, the
profile picked and the input shapes set on every call. ``infer`` takes and returns numpy arrays
(the parity gate's currency); ``infer_device`` takes and returns torch tensors and returns as soon
as the work is queued; ``synchronize`` waits for it (the benchmark harness calls it).
``infer_many`` (throughput mode) does per request exactly what ``infer`` does, the copy of the
outputs to the host included, so a throughput cell times the same work as a latency cell and as
the other targets' cells (whose outputs always reach the host).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.errors import DataError, TargetBuildError
from kiln.spec import Arrays
from kiln.targets.base import Artifact, Runner, RunOptions
from kiln.targets.tensorrt.profiles import Profile, pick_profile
from kiln.tensors import named_outputs


class TensorRTRunner(Runner):
    """One engine, one execution context per optimization profile, one CUDA stream; tensors travel
    through PyTorch. ``infer`` copies in, runs and copies out; ``infer_device`` keeps CUDA tensors
    on the GPU and returns before the work is done (``synchronize`` waits for it)."""

    def __init__(self, trt: Any, engine: Any, artifact: Artifact, profiles: list[Profile], options: RunOptions) -> None:
        import torch

        self.torch, self.engine, self.artifact, self.profiles, self.options = torch, engine, artifact, profiles, options
        self.stream = torch.cuda.Stream()
        self.contexts: dict[int, Any] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.names = artifact.signature.outputs or tuple(self.outputs)  # the order infer returns
        self.dtypes = {n: _torch_dtype(torch, engine.get_tensor_dtype(n).name) for n in names}
        self._in_flight: list[Any] = []  # tensors that must outlive the queued work
        self.owners: tuple[Any, ...] = ()  # the runtime and logger the engine came from
        if artifact.signature.outputs and set(artifact.signature.outputs) != set(self.outputs):
            raise TargetBuildError(
                f"engine outputs {self.outputs} differ from the signature's {list(artifact.signature.outputs)}; rebuild"
            )

    def _context(self, index: int) -> Any:
        if index not in self.contexts:
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, self.stream.cuda_stream)
            self.contexts[index] = context
        return self.contexts[index]

    def infer_device(self, tensors: dict[str, Any]) -> dict[str, Any]:
        torch = self.torch
        shapes = {name: tuple(tensors[name].shape) for name in self.inputs}
        context = self._context(pick_profile(self.profiles, shapes) if len(self.profiles) > 1 else 0)
        self.stream.wait_stream(torch.cuda.current_stream())
        outputs: dict[str, Any] = {}
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                tensor = tensors[name].to("cuda", self.dtypes[name], non_blocking=True).contiguous()
                if not context.set_input_shape(name, tuple(tensor.shape)):
                    raise DataError(f"input {name!r} of shape {tuple(tensor.shape)} does not fit the engine's profile")
                context.set_tensor_address(name, tensor.data_ptr())
                self._in_flight.append(tensor)
            for name in self.outputs:
                shape = tuple(context.get_tensor_shape(name))
                if any(size < 0 for size in shape):
                    raise TargetBuildError(f"output {name!r} has a data-dependent shape {shape}; kiln cannot size it")
                outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
                context.set_tensor_address(name, outputs[name].data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise TargetBuildError("TensorRT failed to enqueue the engine; run with --verbose for its log")
        return outputs

    def _submit(self, inputs: Arrays) -> dict[str, Any]:
        """Queue one request and the copy of its outputs to the host; the host tensors are
        complete once the stream is synchronized."""
        outputs = self.infer_device({n: self.torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.inputs})
        with self.torch.cuda.stream(self.stream):
            return {name: _to_host(outputs[name]) for name in self.names}

    def infer(self, inputs: Arrays) -> Arrays:
        host = self._submit(inputs)
        self.synchronize()
        return named_outputs(self.names, [host[name].numpy() for name in self.names])

    def infer_many(self, batches: list[Arrays]) -> None:
        pending = [self._submit(inputs) for inputs in batches]  # back to back on the stream
        self.synchronize()  # one wait at the end, for the runs and their copies to the host
        del pending  # the host tensors, kept alive until their copies landed

    def synchronize(self) -> None:
        self.stream.synchronize()
        self._in_flight.clear()

    def info(self) -> dict[str, Any]:
        return {
            "execution_precision": self.artifact.precision,
            "device": self.torch.cuda.get_device_name(0),
            "streams": 1,
            "profiles": len(self.profiles),
        }

    def close(self) -> None:
        self.synchronize()
        self.contexts.clear()  # contexts before the engine, the engine before its runtime
        self.engine = None
        self.owners = ()


def _torch_dtype(torch: Any, trt_name: str) -> Any:
    table = {
        "FLOAT": torch.float32,
        "HALF": torch.float16,
        "BF16": torch.bfloat16,
        "INT8": torch.int8,
        "UINT8": torch.uint8,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "BOOL": torch.bool,
        "FP8": torch.float8_e4m3fn,
    }
    if trt_name not in table:
        raise TargetBuildError(f"engine I/O type {trt_name} has no PyTorch equivalent; keep I/O float or integer")
    return table[trt_name]


def _to_host(tensor: Any) -> Any:
    """Float outputs as float32 (the gate's currency), queued on the current stream; a CUDA to CPU
    ``non_blocking`` copy lands in pinned memory, valid after the stream is synchronized."""
    return (tensor.float() if tensor.is_floating_point() else tensor).to("cpu", non_blocking=True)
