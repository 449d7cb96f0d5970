"""kiln: fire a PyTorch model into verified, benchmarked artifacts for every runtime.

The Python API (:mod:`kiln.api`) is exported here and imported on first use, so that
``import kiln`` (and ``kiln --help``) stays instant: ``kiln.build``, ``kiln.benchmark``,
``kiln.load``, ``kiln.generate``, ``kiln.package``, ``kiln.verify`` and their settings and
result types.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# What ``kiln.<name>`` gives: the API's names (kiln.api.__all__, kept equal by tests/test_api.py).
_API = (
    "ArtifactSession",
    "BenchResult",
    "BenchRun",
    "BenchSettings",
    "BuildResult",
    "GenerateSettings",
    "Generation",
    "KilnConfig",
    "PackageResult",
    "PackageSettings",
    "Runner",
    "TargetConfig",
    "VerifySettings",
    "benchmark",
    "build",
    "generate",
    "load",
    "package",
    "verify",
)

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Import :mod:`kiln.api` the first time one of its names is asked for."""
    if name in _API:
        # By name, not an import statement: the API sits at the top of the ladder and imports
        # `kiln` itself (for the version), so a static import here would be a cycle.
        return getattr(importlib.import_module("kiln.api"), name)
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
