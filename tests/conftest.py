"""Shared fixtures: tiny configs written into a temp folder, and capability-based skips."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

MODELS = Path(__file__).parent / "models.py"

CNN = {
    "model": {
        "name": "cnn",
        "source": f"{MODELS}:tiny_cnn",
        "inputs": [{"name": "x", "shape": ["batch", 3, 16, 16]}],
        "dims": {"batch": {"min": 1, "opt": 2, "max": 8}},
    },
    "calibration": {"source": f"{MODELS}:cnn_calibration", "samples": 32},
    "evaluation": {"source": f"{MODELS}:cnn_evaluation", "metric": "top1"},
}
TWO = {
    "model": {
        "name": "two",
        "source": f"{MODELS}:two_in_out",
        "inputs": [{"name": "a", "shape": ["batch", 6]}, {"name": "b", "shape": ["batch", 4]}],
        "dims": {"batch": {"min": 1, "opt": 3, "max": 16}},
    },
    "calibration": {"source": f"{MODELS}:two_calibration", "samples": 32},
}


def to_toml(data: dict[str, Any]) -> str:
    """A tiny TOML writer for the flat configs tests use (tables, arrays of tables, inline dicts)."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)

    lines = []
    for section, body in data.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {value(v)}" for k, v in item.items()]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def write_config(folder: Path, data: dict[str, Any], name: str = "kiln.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(to_toml(data))
    return path


@pytest.fixture
def config_file(tmp_path: Path):
    def make(base: dict[str, Any], **sections: Any) -> Path:
        data = {**base, **sections}
        return write_config(tmp_path, data)

    return make


def skip_unless(target: str, run: bool = False) -> None:
    """Skip the running test when a target cannot build (or run) here, with the registry's reason."""
    from kiln.targets import availability

    avail = availability(target)
    if not avail.build or (run and not avail.run):
        pytest.skip(f"{target}: {avail.reason}")


def _target_of(item: pytest.Item) -> tuple[str, str | None, str] | None:
    """(target, precision, stage) from ``@pytest.mark.target(name, stage=...)``; a parametrized
    ``target`` (and ``precision``) argument supplies the name when the marker gives none."""
    marker = item.get_closest_marker("target")
    if marker is None:
        return None
    params = getattr(item, "callspec", None)
    values = params.params if params is not None else {}
    name = marker.args[0] if marker.args else values.get("target")
    if name is None:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.target needs a name or a 'target' parameter")
    stage = marker.kwargs.get("stage", "build")
    if stage not in ("prepare", "build", "run"):
        raise pytest.UsageError(f"{item.nodeid}: stage must be prepare, build or run, got {stage!r}")
    return name, marker.kwargs.get("precision", values.get("precision")), stage


# Folders whose conftest has session fixtures that build or start servers: under pytest-xdist
# (`make test` runs two workers) each folder is one unit of work, so those fixtures run once and
# its Ray clusters one at a time; elsewhere a module is one unit (its module-scoped builds once).
ONE_WORKER_FOLDERS = ("bench", "fleet", "ship")


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to under pytest-xdist: its module, or its folder when
    that is one of ONE_WORKER_FOLDERS."""
    module = nodeid.split("::")[0]
    parts = module.split("/")
    if len(parts) > 2 and parts[0] == "tests" and parts[1] in ONE_WORKER_FOLDERS:
        return "/".join(parts[:2])
    return module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n N`` hands out whole work units (:func:`work_unit`), largest first. (xdist's own
    ``--dist loadgroup`` relies on rewriting ``item._nodeid``, which pytest 9 no longer has.)"""
    if config.getvalue("dist") not in ("load", "loadscope"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnits(config, log)


def interruptible() -> None:
    """A ``preexec_fn`` for a child a test sends SIGINT: pytest-xdist workers ignore SIGINT, and
    a child would inherit that (Python installs no KeyboardInterrupt handler when it is ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One hook turns the registry into markers and skips: a test that builds a target is
    ``slow``; one that needs the target's hardware gets its capability marker (``gpu`` for CUDA,
    ``macos`` for macOS) and is skipped, with the registry's reason, where it is missing."""
    from kiln.targets import MARKERS, REGISTRY, availability

    for item in items:
        found = _target_of(item)
        if found is None:
            continue
        name, precision, stage = found
        spec = REGISTRY[name]
        needs = () if stage == "prepare" else spec.build_needs + (spec.run_needs if stage == "run" else ())
        for need in dict.fromkeys(needs):
            if need in MARKERS:
                item.add_marker(MARKERS[need])
        if stage != "prepare":
            item.add_marker(pytest.mark.slow)
            avail = availability(name, precision)
            if not avail.build or (stage == "run" and not avail.run):
                label = f"{name}:{precision}" if precision else name
                item.add_marker(pytest.mark.skip(reason=f"{label}: {avail.reason}"))


@pytest.fixture(autouse=True, scope="session")
def _quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def selected_targets(request: pytest.FixtureRequest, buildable: bool = True) -> dict[tuple[str, str], None]:
    """The (target, precision) pairs the selected tests of the requesting module are parametrized
    with, in order (only those that can build here, unless ``buildable`` is false): what a
    module-scoped build fixture builds once."""
    from kiln.targets import availability

    wanted: dict[tuple[str, str], None] = {}
    for item in request.session.items:
        params = getattr(item, "callspec", None)
        if item.module is request.module and params is not None and "target" in params.params:
            pair = (params.params["target"], params.params["precision"])
            if not buildable or availability(*pair).build:
                wanted[pair] = None
    return wanted
