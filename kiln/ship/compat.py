"""Whether an artifact runs on this machine: what :func:`kiln.targets.available_here` says (its
runtime installed, the hardware it needs, what its options need), then its runtime's version
against the one that built it, by the rule its registry row declares
(:class:`kiln.targets.shipping.RuntimeRule`), and, for a GPU-bound artifact, the GPU model.
"""

from __future__ import annotations

import re

from kiln import __version__
from kiln.errors import CompatibilityError, MissingDependencyError
from kiln.manifest import Manifest
from kiln.targets import CAPABILITIES, REGISTRY, available_here, built_with
from kiln.targets.shipping import Policy
from kiln.versions import versions

SAYS: dict[str, str] = {
    "exact": "needs the same version",
    "newer-same-major": "needs the same major, at least as new",
    "same-minor": "needs the same major.minor",
}


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``2.13.0+cpu`` -> (2, 13, 0)."""
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(p) for p in found.group().split(".")) if found else ()


def accepts(policy: Policy, built: str, here: str) -> bool:
    b, h = release(built), release(here)
    if policy == "exact":
        return b == h
    if policy == "same-minor":
        return b[:2] == h[:2]
    return bool(b) and h[:1] == b[:1] and h >= b


def _wanted(policy: Policy, dist: str, built: str) -> str:
    b = release(built)
    if policy == "exact":
        return f"{dist}=={built.split('+')[0]}"
    if policy == "same-minor":
        return f"{dist}=={'.'.join(map(str, b[:2]))}.*"
    return f"'{dist}>={built.split('+')[0]},<{b[0] + 1}'" if b else dist


def check_runs_here(manifest: Manifest, gpus: list[tuple[str | None, str | None]] | None = None) -> list[str]:
    """The checks that passed, one line each; the first that fails raises (exit 5) saying what to
    install or where to run it. ``gpus``: (name, compute capability) of this machine's GPUs
    (default: ``nvidia-smi``)."""
    spec = REGISTRY.get(manifest.target)
    if spec is None:
        raise CompatibilityError(
            f"this kiln ({__version__}) has no target {manifest.target!r}; install the kiln that built it "
            f"({manifest.kiln_version}) or a later one"
        )
    here = available_here(built_with(manifest))
    if not here.run:
        error = MissingDependencyError if here.missing_package else CompatibilityError
        raise error(
            f"this {manifest.key} artifact does not run on this machine: {here.reason}; "
            + (
                "install it"
                if here.missing_package
                else "copy the bundle to a machine that has it and run kiln verify there"
            )
        )
    done = [f"hardware: {CAPABILITIES[need][1]}" for need in spec.run_needs]
    rule = spec.runtime
    runtime = next((p for p in spec.packages if p.module == rule.package), spec.packages[-1])
    dist, installed = next(iter(versions(runtime.dists).items()), (runtime.dists[0], "unknown"))
    built = next((manifest.toolchain[d] for d in runtime.dists if d in manifest.toolchain), None)
    if built is None:
        done.append(f"runtime: {dist} {installed} (the manifest records no build version)")
    elif not accepts(rule.policy, built, installed):
        raise CompatibilityError(
            f"this {manifest.target} artifact was built with {dist} {built} and this machine has {installed}: "
            f"install {_wanted(rule.policy, dist, built)} ({rule.why})"
        )
    else:
        done.append(f"runtime: {dist} {installed}, built with {built} ({SAYS[rule.policy]})")
    if rule.gpu_bound:
        done.append(same_gpu(manifest, gpus if gpus is not None else _gpus()))
    return done


def same_gpu(manifest: Manifest, gpus: list[tuple[str | None, str | None]]) -> str:
    model, capability = manifest.execution.get("gpu"), manifest.execution.get("compute_capability")
    if model is None:
        return "gpu: the manifest records no GPU model"
    if not any(name == model and (capability is None or cc in (None, capability)) for name, cc in gpus):
        found = ", ".join(f"{n} ({cc})" for n, cc in gpus) or "no GPU"
        raise CompatibilityError(
            f"this {manifest.target} artifact was built for {model} (compute capability {capability}) and this "
            f"machine has {found}; run it on a {model}, or rebuild it on this machine"
        )
    return f"gpu: {model} ({capability})"


def _gpus() -> list[tuple[str | None, str | None]]:
    from kiln.targets import fingerprint

    return [(g.name, g.model_extra.get("compute_capability") if g.model_extra else None) for g in fingerprint().gpus]
