"""Which built artifacts a shipping command works on: the folders of ``build/<model>/`` that hold
a ``manifest.json``, filtered by ``--target`` selectors, in a stable order."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kiln.config import parse_selector
from kiln.errors import ConfigError
from kiln.manifest import Manifest
from kiln.store import MANIFEST


def artifact_folders(model_dir: Path, targets: Sequence[str] = ()) -> list[Path]:
    """The artifact folders of ``build/<model>/`` (sorted by name), those matching ``targets`` if
    given. A selector is ``NAME``, ``NAME:PRECISION`` (dense and pruned variants alike),
    ``NAME:PRECISION:PRUNE-SLUG`` or a folder's name (``onnxruntime-int8``). An artifact folder
    itself (``build/<model>/<target-dir>``) stands for just that artifact."""
    if not model_dir.is_dir():
        raise ConfigError(
            f"{model_dir} is not a folder; pass build/<model> (what kiln build wrote) or one artifact in it"
        )
    if (model_dir / MANIFEST).is_file():
        candidates = [model_dir]
    else:
        candidates = sorted(p for p in model_dir.iterdir() if p.is_dir() and (p / MANIFEST).is_file())
    if not candidates:
        found = sorted(p.name for p in model_dir.iterdir() if not p.name.startswith("."))
        raise ConfigError(
            f"{model_dir} holds no built artifact (no <target>-<precision>/manifest.json; it has: "
            f"{', '.join(found) or 'nothing'}); run kiln build first and pass build/<model>"
        )
    if not targets:
        return candidates
    manifests = {folder: Manifest.read(folder) for folder in candidates}
    chosen = [folder for folder, m in manifests.items() if any(_matches(folder, m, s) for s in targets)]
    if not chosen:
        built = ", ".join(f"{m.target}:{m.precision}" + (f":{m.slug}" if m.slug else "") for m in manifests.values())
        raise ConfigError(
            f"--target {', '.join(targets)} matches no artifact in {model_dir}; built: {built} "
            "(use NAME, NAME:PRECISION or NAME:PRECISION:PRUNE-SLUG)"
        )
    return chosen


def _matches(folder: Path, manifest: Manifest, selector: str) -> bool:
    return selector == folder.name or parse_selector(selector).matches(
        manifest.target, manifest.precision, manifest.slug
    )
