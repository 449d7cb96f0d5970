"""Open a built artifact to run it: the one way ``kiln serve``, ``kiln generate``, ``kiln verify
--run``, the benchmark's worker and ``kiln.load`` do it.

:func:`artifact_manifest` reads the folder's manifest (a model's build folder, or a folder with
none, is one line saying what to give); :func:`open_runner` checks that the artifact can run here
(the registry row's run needs, then what its options need beyond them: exit 5 with the reason) and
loads it through its target; :func:`open_session` opens a causal LM's step graph as a decode
session that owns its runner; :func:`open_artifact` gives whichever the artifact is; :func:`artifact_tokenizer` reads the
tokenizer a causal LM's artifact carries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.decoding import DecodeSession, Tokenizer, session_for
from kiln.errors import ConfigError
from kiln.manifest import Manifest
from kiln.store import MANIFEST
from kiln.targets import loader
from kiln.targets.base import Artifact, Runner, RunOptions


def artifact_manifest(folder: Path, verb: str = "open") -> Manifest:
    """The manifest of ``build/<model>/<target-dir>``; a model's build folder or a folder without
    a manifest is one ``ConfigError`` line naming what to give instead (``verb``: what the
    command does with one, for that line)."""
    if folder.is_dir() and not (folder / MANIFEST).is_file():
        inside = _artifacts_in(folder)
        if inside:
            what = "a model's build folder" if "/" not in inside[0] else "a build folder"
            shown = ", ".join(inside[:12]) + (f", ... ({len(inside)} in all)" if len(inside) > 12 else "")
            raise ConfigError(
                f"{folder} is {what} with {len(inside)} artifacts; {verb} one of them, "
                f"e.g. {folder / inside[0]} (choose from: {shown})"
            )
    if not (folder / MANIFEST).is_file():
        raise ConfigError(
            f"{folder} is not an artifact folder (no {MANIFEST} in it); give build/<model>/<target-dir>, "
            "what kiln build wrote"
        )
    return Manifest.read(folder)


def _artifacts_in(folder: Path) -> list[str]:
    """The artifact folders in a model's build folder (``onnxruntime-fp32``), else in the model
    folders of a build folder (``tinyllm/onnxruntime-fp32``)."""
    for pattern in (f"*/{MANIFEST}", f"*/*/{MANIFEST}"):
        found = sorted(p.parent.relative_to(folder).as_posix() for p in folder.glob(pattern) if p.is_file())
        if found:
            return found
    return []


def artifact_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer a causal LM's artifact carries (its ``tokenizer/`` folder, as the build copied it)."""
    from kiln.capture.exporters import TOKENIZER

    return Tokenizer(folder / TOKENIZER)


def open_runner(folder: Path, options: RunOptions | None = None, manifest: Manifest | None = None) -> Runner:
    """The artifact's runner, loaded through its target once it is known to run here (exit 5
    with the reason where it cannot). ``manifest``: when the caller has read it already."""
    manifest = manifest if manifest is not None else artifact_manifest(folder)
    target = loader(manifest)
    return target.load(Artifact.from_manifest(folder, manifest), options or RunOptions())


class ArtifactSession(DecodeSession):
    """A causal LM's artifact opened for decoding: the session its runtime gives (its own, where
    it keeps the cache; else the explicit cache), which owns the runner: ``close`` releases both."""

    def __init__(self, folder: Path, manifest: Manifest, runner: Runner) -> None:
        super().__init__(manifest.signature)
        self.folder = folder
        self.manifest = manifest
        self.runner = runner
        self._inner = session_for(runner, manifest.signature)

    def _step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        # The inner session keeps the same length as this one (both reset together), so it
        # places the chunk at the same positions.
        return self._inner.feed(ids[0].tolist())[None]

    def _reset(self) -> None:
        self._inner.reset()

    def close(self) -> None:
        self._inner.close()
        self.runner.close()

    def __enter__(self) -> ArtifactSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decodable(folder: Path, manifest: Manifest | None = None) -> Manifest:
    """The manifest of a causal LM's artifact; any other artifact is one ``ConfigError`` line."""
    manifest = manifest if manifest is not None else artifact_manifest(folder, "decode from")
    if not manifest.signature.generative:
        raise ConfigError(
            f"{folder} is a {manifest.model} artifact without a KV cache (not a text-generation model); "
            "decoding needs a causal LM built with task text-generation"
        )
    return manifest


def open_session(folder: Path, options: RunOptions | None = None, manifest: Manifest | None = None) -> ArtifactSession:
    """A causal LM's artifact as a decode session (see :func:`decodable`)."""
    manifest = decodable(folder, manifest)
    return ArtifactSession(folder, manifest, open_runner(folder, options, manifest))


def open_artifact(folder: Path, options: RunOptions | None = None) -> Runner | ArtifactSession:
    """A fixed graph's runner, or a causal LM's decode session (see :func:`open_session`)."""
    manifest = artifact_manifest(folder)
    opener = open_session if manifest.signature.generative else open_runner
    return opener(folder, options, manifest)
