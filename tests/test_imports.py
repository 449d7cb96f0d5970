"""`import kiln.cli` must pull in no toolchain: `kiln --help` stays instant and a missing extra
breaks only its own target."""

from __future__ import annotations

import subprocess
import sys

from kiln.targets import toolchain_modules

TOOLCHAINS = list(toolchain_modules())


def test_importing_the_cli_imports_no_toolchain() -> None:
    code = (
        "import sys, kiln.cli, kiln.config, kiln.targets, kiln.pipeline.build;"
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


def test_no_script_shadows_an_installed_package() -> None:
    """A script run as ``python benchmarks/x.py`` puts its folder first on sys.path: a file there
    named like a package (``executorch.py``) is imported instead of it, and the suite dies with
    "'executorch' is not a package". Every script folder is checked against what is installed."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    folders = [
        root / "benchmarks",
        root / "benchmarks" / "peers",
        *(p for p in (root / "examples").iterdir() if p.is_dir()),
    ]
    shadowing = []
    for folder in folders:
        for script in folder.glob("*.py"):
            loaded = sys.modules.get(script.stem)
            spec = loaded.__spec__ if loaded is not None else importlib.util.find_spec(script.stem)
            installed = script.stem in sys.stdlib_module_names or (
                # a namespace package (executorch is one) has no origin
                spec is not None and (spec.origin in (None, "namespace") or Path(spec.origin).parent != folder)
            )
            if installed:
                shadowing.append(str(script.relative_to(root)))
    assert not shadowing, f"rename these scripts, they shadow installed modules: {shadowing}"
