"""Shared by the peer scripts: re-run inside a peer's venv, offline, list versions."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("OPTIMUM_VENV", HERE / ".venv-optimum"))

PACKAGES = [
    "optimum-intel",
    "optimum",
    "openvino",
    "openvino-tokenizers",
    "nncf",
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "torch",
    "numpy",
]


def ensure_peer_venv() -> None:
    """Re-exec this script with the peer venv's python when optimum-intel is not importable here."""
    ensure_venv("optimum.intel", VENV, "optimum_intel.sh")


def ensure_venv(module: str, venv: Path, maker: str) -> None:
    """Re-exec this script with ``venv``'s python when ``module`` is not importable here."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        py = venv / "bin" / "python"
        if not py.exists():
            sys.exit(f"{module} is not installed here and {py} is missing: run bash {HERE / maker}")
        if Path(sys.prefix).resolve() == venv.resolve():
            raise
        os.execv(str(py), [str(py), *sys.argv])


def offline_env() -> None:
    """The HF hub is never reached: local folders only."""
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(k, "1")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = sys.version.split()[0]
    import openvino

    out["openvino_build"] = openvino.get_version()
    return out
