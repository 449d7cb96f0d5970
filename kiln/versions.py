"""Toolchain versions, read from package metadata without importing anything heavy."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

CORE = ("torch", "onnx", "onnxscript", "numpy")
KNOWN = (*CORE, "onnxruntime", "openvino", "nncf", "coremltools", "tensorrt", "transformers", "torch-pruning")


def versions(dists: tuple[str, ...] | list[str] = KNOWN) -> dict[str, str]:
    found = {}
    for dist in dists:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found
