"""What a registry row says about shipping its artifacts: which runtime versions load them
(:class:`RuntimeRule`, read by ``kiln verify``) and how a model server loads them
(:class:`Serving`, read by ``kiln package --repository``). Data only: ``kiln.ship`` applies it,
and no module outside ``kiln/targets/`` asks which target an artifact came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Policy = Literal["exact", "newer-same-major", "same-minor"]


@dataclass(frozen=True)
class RuntimeRule:
    """Which runtime versions load an artifact built with a given one, and why."""

    policy: Policy
    why: str
    gpu_bound: bool = False  # the artifact only runs on the GPU model it was built on
    package: str | None = None  # the package whose version counts (import name); default: the row's last


# A target whose row names no rule: the common rule of a versioned file format.
DEFAULT_RULE = RuntimeRule("newer-same-major", "a runtime reads files of its own and earlier releases")


@dataclass(frozen=True)
class Serving:
    """How Triton (and, where ``ovms``, OpenVINO Model Server) loads this target's artifacts.

    ``io_from`` says where the served inputs and outputs are read: the artifact's own ONNX
    (``"onnx"``, with its external data), its OpenVINO IR (``"ir"``, with the ``.bin``), or the ONNX
    it was built from (``"source-onnx"``: an engine is readable only with its runtime on its GPU).
    """

    backend: str  # Triton's backend name
    what: str  # the format in words: "ONNX", "OpenVINO IR"
    model_file: str  # the file Triton and OVMS load from the version folder
    io_from: Literal["onnx", "ir", "source-onnx"]
    platform: str | None = None  # Triton's platform string, where the backend wants one
    gpu: bool = False  # one GPU instance (else one CPU instance)
    ovms: bool = False  # OVMS loads it too
    # The backend compiles at max_batch_size and pads smaller batches (Triton's openvino backend
    # with ENABLE_BATCH_PADDING): preferring smaller batch sizes buys nothing.
    pads_batches: bool = False
    # Why an artifact whose execution info says ``stateful`` is refused; None: none is stateful.
    stateful_refusal: str | None = None
