"""Toolchain versions, read from package metadata without importing anything heavy."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# What every export stage is built with (its cache key); the toolchains are the registry's
# (``kiln.targets.toolchains``; tests/test_toolchain_lists.py keeps this a part of them).
CORE = ("torch", "onnx", "onnxscript", "numpy")


def versions(dists: tuple[str, ...] | list[str]) -> dict[str, str]:
    """The installed version of each distribution that is installed (the others are left out)."""
    found = {}
    for dist in dists:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found
