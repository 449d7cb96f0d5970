"""User code named in a config: ``path/file.py:fn`` or ``package.module:fn``, and paths relative
to the config's folder. Every layer that calls a user's function (sources, data, metrics, recovery)
loads it here."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from kiln.errors import SourceError


def resolve_path(root: Path, path: str) -> Path:
    """``path`` as given when absolute, else under ``root`` (the config's folder)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p)


def load_callable(ref: str, root: Path, what: str) -> Any:
    """Import ``path/file.py:fn`` or ``package.module:fn``."""
    module_part, sep, attr = ref.rpartition(":")
    if not sep or not attr:
        raise SourceError(f"{what} {ref!r} needs the form path/file.py:fn or package.module:fn")
    try:
        if module_part.endswith(".py"):
            path = resolve_path(root, module_part).resolve()
            if not path.is_file():
                raise SourceError(f"{what} file {path} does not exist; check the path in the config")
            name = f"kiln_user_{path.stem}_{abs(hash(str(path)))}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec and spec.loader
                module = importlib.util.module_from_spec(spec)
                sys.path.insert(0, str(path.parent))
                try:
                    sys.modules[name] = module
                    spec.loader.exec_module(module)
                finally:
                    sys.path.remove(str(path.parent))
        else:
            module = importlib.import_module(module_part)
    except SourceError:
        raise
    except Exception as err:  # user code: any failure is the user's to fix, with its cause kept
        raise SourceError(f"{what} {ref!r} failed to import: {type(err).__name__}: {err}") from err
    if not hasattr(module, attr):
        raise SourceError(f"{what} {ref!r}: module has no attribute {attr!r}")
    return getattr(module, attr)
