"""`import kiln.cli` must pull in no toolchain: `kiln --help` stays instant and a missing extra
breaks only its own target."""

from __future__ import annotations

import subprocess
import sys

TOOLCHAINS = [
    "torch",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "openvino",
    "nncf",
    "coremltools",
    "tensorrt",
    "transformers",
]


def test_importing_the_cli_imports_no_toolchain() -> None:
    code = (
        "import sys, kiln.cli, kiln.config, kiln.targets, kiln.build;"
        f"print([m for m in {TOOLCHAINS!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_kiln_module_imports() -> None:
    import importlib
    import pkgutil

    import kiln

    for info in pkgutil.walk_packages(kiln.__path__, "kiln."):
        importlib.import_module(info.name)
