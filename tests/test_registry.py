"""Every target spec has a module, an extra in pyproject.toml, tolerances and conformance cover."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

from kiln.parity import DEFAULT_TOLERANCES
from kiln.targets import CAPABILITIES, REGISTRY, availability, check_target
from kiln.targets.base import Target

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())


@pytest.mark.parametrize("name", list(REGISTRY))
def test_spec_is_complete(name: str) -> None:
    spec = REGISTRY[name]
    assert importlib.util.find_spec(spec.module) is not None, f"{spec.module} is missing"
    if spec.extra:
        assert spec.extra in PYPROJECT["project"]["optional-dependencies"]
    for need in (*spec.build_needs, *spec.run_needs):
        assert need in CAPABILITIES
    for precision in spec.precisions:
        assert precision in DEFAULT_TOLERANCES, f"{name}:{precision} has no default tolerance"
        assert check_target(name, precision) is spec


@pytest.mark.parametrize("name", list(REGISTRY))
def test_target_module_defines_a_target(name: str) -> None:
    avail = availability(name)
    module = importlib.import_module(REGISTRY[name].module)  # imports no toolchain at top level
    assert isinstance(module.TARGET, Target)
    assert avail.build or avail.reason.startswith("needs ")


def test_availability_explains_why_not() -> None:
    for name in REGISTRY:
        avail = availability(name)
        assert (avail.build and avail.run) or avail.reason
