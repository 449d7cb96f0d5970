"""Whether an artifact runs on this machine: its runtime installed at a version its format loads
in, and the hardware it needs. The packages and hardware come from the target's registry row;
the version rule per format is the table below (a test keeps one row per registered target).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from kiln import __version__
from kiln.errors import CompatibilityError, MissingDependencyError
from kiln.manifest import Manifest
from kiln.targets import CAPABILITIES, REGISTRY
from kiln.versions import versions

Policy = Literal["exact", "newer-same-major", "same-minor"]
SAYS: dict[str, str] = {
    "exact": "needs the same version",
    "newer-same-major": "needs the same major, at least as new",
    "same-minor": "needs the same major.minor",
}


@dataclass(frozen=True)
class RuntimeRule:
    policy: Policy
    why: str
    gpu_bound: bool = False  # the artifact only runs on the GPU model it was built on
    runtime: str | None = None  # the package whose version counts (import name); default: the row's last


RULES: dict[str, RuntimeRule] = {
    "eager": RuntimeRule(
        "newer-same-major",
        "a saved torch.export program carries its serialization version and later torch releases read it",
    ),
    "aoti": RuntimeRule(
        "exact",
        "an AOTInductor package is C++ compiled against the libtorch headers and ABI of the torch that "
        "built it; another release can fail to load it or crash in it",
    ),
    "onnxruntime": RuntimeRule(
        "newer-same-major", "ONNX Runtime runs every opset it shipped with, and later releases only add opsets"
    ),
    "openvino": RuntimeRule(
        "newer-same-major",
        "OpenVINO reads IR written by its own or an earlier release of the same year's line; an older runtime "
        "may not know an operator set",
    ),
    "coreml": RuntimeRule("newer-same-major", "coremltools reads model specifications of its own and earlier versions"),
    "tensorrt": RuntimeRule(
        "exact",
        "a serialized TensorRT engine deserializes only in the TensorRT version that built it, and its kernels "
        "were chosen for one GPU model",
        gpu_bound=True,
    ),
    "executorch": RuntimeRule(
        "same-minor",
        "the .pte program's flatbuffer schema and kernel registry change between minor releases",
        runtime="executorch",
    ),
}
# A target this table does not know yet: the common rule of a versioned file format.
DEFAULT_RULE = RuntimeRule("newer-same-major", "a runtime reads files of its own and earlier releases")


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
    done = []
    for need in spec.run_needs:
        present, what = CAPABILITIES[need]
        if not present():
            raise CompatibilityError(
                f"{manifest.target} artifacts run on {what} and this machine has none; copy the bundle to such a "
                "machine and run kiln verify there"
            )
        done.append(f"hardware: {what}")
    for package in spec.packages:
        if not package.installed:
            raise MissingDependencyError(f"{manifest.target} artifacts run with {package.install_hint}; install it")
    rule = RULES.get(manifest.target, DEFAULT_RULE)
    runtime = next((p for p in spec.packages if p.module == rule.runtime), spec.packages[-1])
    dist, here = next(iter(versions(runtime.dists).items()), (runtime.dists[0], "unknown"))
    built = next((manifest.toolchain[d] for d in runtime.dists if d in manifest.toolchain), None)
    if built is None:
        done.append(f"runtime: {dist} {here} (the manifest records no build version)")
    elif not accepts(rule.policy, built, here):
        raise CompatibilityError(
            f"this {manifest.target} artifact was built with {dist} {built} and this machine has {here}: "
            f"install {_wanted(rule.policy, dist, built)} ({rule.why})"
        )
    else:
        done.append(f"runtime: {dist} {here}, built with {built} ({SAYS[rule.policy]})")
    if rule.gpu_bound:
        done.append(same_gpu(manifest, gpus if gpus is not None else _gpus()))
    blocker = _run_blocker(manifest)
    if blocker is not None:
        raise CompatibilityError(
            f"this {manifest.target}:{manifest.precision} artifact does not run on this machine ({blocker}); "
            "copy the bundle to a device that runs it and run kiln verify there"
        )
    return done


def _run_blocker(manifest: Manifest) -> str | None:
    """What the target says its options need beyond the registry row (a delegate only another
    device runs)."""
    from kiln.config import TargetConfig
    from kiln.targets import implementation, target_options

    target = TargetConfig(name=manifest.target, precision=manifest.precision, options=manifest.options)
    return implementation(manifest.target).run_blocker(target_options(target))


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
