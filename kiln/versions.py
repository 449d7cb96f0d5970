"""Toolchain versions, read from package metadata without importing anything heavy."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

CORE = ("torch", "onnx", "onnxscript", "numpy")
# Distributions of the sources and passes that are not targets (each target's are in its registry row).
SOURCES = ("transformers", "torch-pruning")


def versions(dists: tuple[str, ...] | list[str]) -> dict[str, str]:
    """The installed version of each distribution that is installed (the others are left out)."""
    found = {}
    for dist in dists:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found
