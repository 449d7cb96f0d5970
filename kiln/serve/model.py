"""The artifact being served: found (an artifact folder or a verified bundle), loaded once through
the registry, probed, and described as the v2 protocol's model metadata.

The signature names the outputs but not their dtypes or shapes, so the runner is probed at load:
once with every dynamic dim at its smallest, once with each one step larger. That warms the
runtime up before the first real request, gives each output's datatype and which of its axes
vary (-1 in the metadata), and shows whether every output leads with the batch dim: only then
can requests be stacked into one batch.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import ConfigError, TargetBuildError
from kiln.manifest import Manifest
from kiln.serve.protocol import V2_BY_SPEC, ModelIO, v2_datatype
from kiln.ship.archive import DEFAULT_LIMITS, Limits
from kiln.spec import Arrays, Signature, batch_dim, random_inputs
from kiln.store import MANIFEST
from kiln.targets.base import Runner, RunOptions
from kiln.targets.opening import artifact_manifest, open_runner

VERSION = "1"  # one artifact, one version: what clients and tritonclient ask for by default


def is_bundle(path: Path) -> bool:
    return path.is_file() and (path.name.endswith((".tar.gz", ".tgz")) or tarfile.is_tarfile(path))


def artifact_folder(path: Path, scratch: Path, pubkey: Path | None, limits: Limits = DEFAULT_LIMITS) -> Path:
    """The artifact folder to serve: ``path`` itself, or a bundle extracted (and verified) into
    ``scratch``; anything else is one line saying what to give."""
    if is_bundle(path):
        from kiln.ship.verify import extract_verified

        return extract_verified(path, scratch, pubkey, limits)
    if pubkey is not None:
        raise ConfigError(f"--pubkey checks a bundle's signature and {path} is not a bundle; drop --pubkey")
    if path.is_dir():
        artifact_manifest(path, "serve")  # a model's build folder: one line naming its artifacts
        return path
    raise ConfigError(
        f"{path} is neither a kiln bundle (.tar.gz from kiln package) nor an artifact folder with a "
        f"{MANIFEST}; give build/<model>/<target-dir> or a bundle"
    )


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a dim that varies

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class ServedModel:
    """One loaded artifact: its runner, what the protocol says about it, and how it batches."""

    name: str
    folder: Path
    manifest: Manifest
    runner: Runner
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    batch_dim: str | None  # set when requests can be stacked along axis 0
    batch_note: str  # why it cannot, when it cannot

    @property
    def io(self) -> ModelIO:
        return ModelIO(self.name, self.manifest.signature, tuple(t.name for t in self.outputs))

    @property
    def platform(self) -> str:
        return self.manifest.target

    def batch_max(self) -> int:
        assert self.batch_dim is not None
        return self.manifest.signature.dims[self.batch_dim].max

    def metadata(self) -> dict[str, Any]:
        """``GET /v2/models/<name>``."""
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": self.platform,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    def close(self) -> None:
        self.runner.close()


def load_model(folder: Path, name: str | None, threads: int | None) -> ServedModel:
    """Load the artifact's runner (exit 5 with the registry's reason where it cannot run here)
    and probe it."""
    manifest = artifact_manifest(folder)
    sig = manifest.signature
    runner = open_runner(folder, RunOptions(threads=threads), manifest)
    try:
        small, larger = _probe(runner, sig)
    except Exception as err:
        runner.close()
        raise TargetBuildError(
            f"{manifest.target}:{manifest.precision} failed a warm-up request at the signature's smallest "
            f"shapes ({type(err).__name__}: {err}); rebuild the artifact with kiln build"
        ) from err
    inputs = tuple(
        Tensor(spec.name, V2_BY_SPEC[spec.dtype], tuple(_dim_size(sig, s) for s in spec.shape)) for spec in sig.inputs
    )
    outputs = tuple(_output(name, small[name], larger[name]) for name in small)
    dim, note = _batching(sig, small, larger)
    return ServedModel(name or manifest.model, folder, manifest, runner, inputs, outputs, dim, note)


def _dim_size(sig: Signature, size: int | str) -> int:
    if isinstance(size, int):
        return size
    spec = sig.dims[size]
    return spec.min if spec.static else -1


def _probe_sizes(sig: Signature) -> tuple[dict[str, int], dict[str, int]]:
    first = batch_dim(sig)
    small = {n: max(d.min, 1) if n == first else d.min for n, d in sig.dims.items()}
    larger = {n: min(size + 1, sig.dims[n].max) for n, size in small.items()}
    return small, larger


def _probe(runner: Runner, sig: Signature) -> tuple[Arrays, Arrays]:
    small, larger = _probe_sizes(sig)
    return runner.infer(random_inputs(sig, sizes=small)), runner.infer(random_inputs(sig, sizes=larger, seed=1))


def _output(name: str, small: np.ndarray, larger: np.ndarray) -> Tensor:
    if small.ndim != larger.ndim:
        shape = (-1,) * small.ndim
    else:
        shape = tuple(a if a == b else -1 for a, b in zip(small.shape, larger.shape, strict=True))
    return Tensor(name, v2_datatype(small.dtype), shape)


def _batching(sig: Signature, small: Arrays, larger: Arrays) -> tuple[str | None, str]:
    """The batch dim when requests can be stacked: it leads every input, can grow, and every
    output's leading axis follows it."""
    dim = batch_dim(sig)
    if dim is None:
        return None, "no batch dim: requests run one by one"
    if sig.dims[dim].static:
        return None, f"the batch dim {dim!r} is static: requests run one by one"
    if any(not spec.shape or spec.shape[0] != dim for spec in sig.inputs):
        return None, f"not every input leads with {dim!r}: requests run one by one"
    sizes = _probe_sizes(sig)
    for probe, at in ((small, sizes[0][dim]), (larger, sizes[1][dim])):
        for name, array in probe.items():
            if array.ndim == 0 or array.shape[0] != at:
                return None, f"output {name!r} does not lead with {dim!r}: requests run one by one"
    return dim, ""
