"""Hardware as Ray resources: what a node advertises, what a task asks for, who can serve it.

A node (``kiln node``, or the in-process cluster) advertises, from its own fingerprint and the
registry's capability checks:

- ``kiln_bench_slot: 1``: the node itself. A bench task takes it whole; an export or a build takes
  :data:`SHARE` of it. So a benchmark starts only once no kiln build runs on its node, and no
  build starts there until it is done, while builds still run side by side (their number is
  bounded by ``CPU``, one each).
- ``kiln_kind_<id>: 1``: its hardware kind (the fingerprint's id, or a name given with ``--kind``);
  bench tasks are steered to a kind with it.
- ``kiln_cap_<name>: 1`` per registry capability it has (``cuda``, ``macos``, ``cxx``,
  ``coreml-converter``), ``kiln_pkg_<module>: 1`` per toolchain package installed,
  ``kiln_isa_<flag>: 1`` per CPU feature of note, ``kiln_gpu_<model>: count``.

A task asks for what its target needs in the registry (``build_needs``, ``run_needs``, the
packages of the precision), so TensorRT lands on an NVIDIA node and Core ML runs on a Mac. Every
request is checked against the live nodes before it is submitted: one no node can serve is
reported with the reason instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kiln.results import Fingerprint
from kiln.targets import CAPABILITIES, REGISTRY, Package

SLOT = "kiln_bench_slot"
SHARE = 0.01  # of a node's bench slot, held by each export or build running there
KIND = "kiln_kind_"
CAP = "kiln_cap_"
PKG = "kiln_pkg_"
ISA = "kiln_isa_"
GPU = "kiln_gpu_"
EXPORT_PACKAGES = ("torch", "onnx", "onnxscript")  # kiln's own dependencies: capture and lowering


def slug(text: str) -> str:
    """A resource-safe name: lower-case letters, digits and dashes."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out


def packages() -> dict[str, Package]:
    """Every package some target imports, by import name (the registry's rows)."""
    found: dict[str, Package] = {}
    for spec in REGISTRY.values():
        for precision in spec.precisions:
            for package in spec.packages_for(precision.name):
                found.setdefault(package.module, package)
    return found


def node_resources(
    fp: Fingerprint, capabilities: Iterable[str], installed: Iterable[str], kind: str | None = None
) -> dict[str, float]:
    """The custom resources a node with this fingerprint, these registry capabilities and these
    installed packages advertises."""
    resources: dict[str, float] = {SLOT: 1.0, KIND + slug(kind or fp.id): 1.0}
    resources |= {CAP + name: 1.0 for name in capabilities}
    resources |= {PKG + module: 1.0 for module in (*EXPORT_PACKAGES, *installed)}
    resources |= {ISA + flag: 1.0 for flag, present in fp.flags.items() if present}
    for gpu in fp.gpus:
        name = GPU + slug(gpu.name or "gpu")
        resources[name] = resources.get(name, 0.0) + 1.0
    return resources


def here(kind: str | None = None) -> dict[str, float]:
    """This machine's resources (what ``kiln node`` advertises)."""
    from kiln.targets import fingerprint

    caps = [name for name, (check, _) in CAPABILITIES.items() if check()]
    installed = [module for module, package in packages().items() if package.installed]
    return node_resources(fingerprint(), caps, installed, kind)


@dataclass(frozen=True)
class Request:
    """What one task asks of a node: CPUs and custom resources, each with what it stands for."""

    resources: dict[str, float]
    why: dict[str, str] = field(default_factory=dict)  # resource -> a phrase for the skip reason
    cpus: float = 1.0


def _needs(caps: Iterable[str], pkgs: Iterable[Package]) -> tuple[dict[str, float], dict[str, str]]:
    resources: dict[str, float] = {}
    why: dict[str, str] = {}
    for cap in dict.fromkeys(caps):
        resources[CAP + cap] = SHARE
        why[CAP + cap] = CAPABILITIES[cap][1]
    for package in pkgs:
        resources[PKG + package.module] = SHARE
        why[PKG + package.module] = package.install_hint
    return resources, why


def export_request() -> Request:
    resources, why = _needs((), ())
    resources |= {PKG + module: SHARE for module in EXPORT_PACKAGES}
    why |= {PKG + module: f"the Python package {module!r}" for module in EXPORT_PACKAGES}
    return Request({SLOT: SHARE, **resources}, {SLOT: "a kiln node (kiln node)", **why})


def build_request(target: str, precision: str) -> Request:
    """A target's build: the registry's build needs of the target and precision, its packages."""
    spec = REGISTRY[target]
    caps = spec.build_needs + spec.precision(precision).build_needs
    resources, why = _needs(caps, spec.packages_for(precision))
    return Request({SLOT: SHARE, **resources}, {SLOT: "a kiln node (kiln node)", **why})


def run_request(target: str) -> Request:
    """What running a target's artifact needs (checked per hardware kind; not submitted alone)."""
    spec = REGISTRY[target]
    resources, why = _needs(spec.run_needs, spec.packages)
    return Request(resources, why, cpus=0.0)


def bench_request(kind: str) -> Request:
    """A bench task: the whole bench slot of one node of this kind."""
    return Request(
        {SLOT: 1.0, KIND + slug(kind): SHARE},
        {SLOT: "a kiln node with no other kiln task", KIND + slug(kind): f"a node of kind {kind}"},
    )


def serves(request: Request, node: Mapping[str, float]) -> bool:
    """Whether a node with these total resources can ever run the request."""
    if node.get("CPU", 0.0) < request.cpus:
        return False
    return all(node.get(name, 0.0) >= amount for name, amount in request.resources.items())


def unmet(request: Request, nodes: list[Mapping[str, float]]) -> str | None:
    """``None`` if some node can serve the request, else what none of them has, as a phrase."""
    if any(serves(request, node) for node in nodes):
        return None
    if not nodes:
        return "no kiln node is in the cluster (start one with kiln node --address HEAD)"
    missing = [
        [name for name, amount in request.resources.items() if node.get(name, 0.0) < amount]
        + (["CPU"] if node.get("CPU", 0.0) < request.cpus else [])
        for node in nodes
    ]
    closest = min(missing, key=len)
    phrases = [request.why.get(name, name) for name in closest]
    return f"no node in the cluster has {' and '.join(phrases)}; start kiln node on a machine that has it"


def kinds(nodes: list[Mapping[str, float]]) -> dict[str, list[Mapping[str, float]]]:
    """The live kiln nodes by hardware kind (the resource's name after ``kiln_kind_``)."""
    found: dict[str, list[Mapping[str, float]]] = {}
    for node in nodes:
        for name in node:
            if name.startswith(KIND):
                found.setdefault(name.removeprefix(KIND), []).append(node)
    return found
