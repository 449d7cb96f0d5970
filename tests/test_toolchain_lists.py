"""Every list of toolchains is the registry's (``kiln.targets.toolchains``): the import
contracts in pyproject.toml, the tests that check nothing imports a toolchain, the loggers kiln
quiets, the distributions a hardware fingerprint records. Four hand-kept lists had drifted
apart; a toolchain a row adds now reaches every one of them, or this fails."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

from kiln import hardware
from kiln.targets import (
    CAPTURE,
    REGISTRY,
    quiet_loggers,
    quiet_toolchains,
    toolchain_dists,
    toolchain_modules,
    toolchains,
)
from kiln.versions import CORE, versions

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_toolchains_are_capture_s_and_every_row_s_once_each() -> None:
    rows = {p.module for s in REGISTRY.values() for p in s.packages}
    rows |= {p.module for s in REGISTRY.values() for prec in s.precisions for p in prec.needs}
    assert set(toolchain_modules()) == rows | {p.module for p in CAPTURE}
    assert len(toolchain_modules()) == len(set(toolchain_modules()))


@pytest.mark.parametrize("contract", [c["name"] for c in CONTRACTS if c["type"] == "forbidden"])
def test_every_import_contract_forbids_exactly_the_registry_s_toolchains(contract: str) -> None:
    (listed,) = [c["forbidden_modules"] for c in CONTRACTS if c["name"] == contract]
    assert listed == list(toolchain_modules()), f"pyproject.toml: set forbidden_modules = {list(toolchain_modules())}"


def test_the_no_toolchain_tests_check_the_registry_s_toolchains() -> None:
    from tests import test_imports, test_registry

    assert list(test_imports.TOOLCHAINS) == list(toolchain_modules())
    assert tuple(test_registry.TOOLCHAINS) == toolchain_modules()


def test_kiln_quiets_exactly_the_toolchains_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in quiet_loggers():
        assert any(name == p.module or name.startswith(p.module + ".") for p in toolchains()), name
    from kiln.targets import base

    monkeypatch.setattr(base, "QUIET", base.QUIET)  # restored after the test
    levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    try:
        quiet_toolchains()
        quieted = {n for n in logging.root.manager.loggerDict if logging.getLogger(n).level == logging.ERROR}
        assert set(quiet_loggers()) <= quieted
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_the_targets_own_quiet_lists_name_the_registry_s_toolchains() -> None:
    from kiln.targets import coreml
    from kiln.targets.executorch import lower

    assert set(coreml.NOISY) <= set(toolchain_modules())
    assert set(lower.NOISY) - {"root"} <= set(toolchain_modules())


def test_the_export_stage_s_toolchains_are_the_registry_s() -> None:
    from kiln.fleet.resources import EXPORT_PACKAGES, packages

    assert set(CORE) - {"numpy"} <= set(toolchain_dists()), "kiln.versions.CORE names a toolchain the registry lacks"
    assert set(EXPORT_PACKAGES) <= set(toolchain_modules())
    assert {p.dists[0] for p in CAPTURE if p.module in EXPORT_PACKAGES} == set(CORE) - {"numpy"}
    assert set(packages()) <= set(toolchain_modules())


def test_a_fingerprint_records_every_installed_toolchain() -> None:
    recorded = hardware.fingerprint(toolchain_dists()).toolchain
    assert set(recorded) == set(versions((*CORE, *toolchain_dists())))
