"""The registry is the one place target policy lives: each row is complete and true, and the
checks it drives (availability, config-time refusals) behave as the CLI promises."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kiln.config import TargetConfig, parse_config
from kiln.errors import ConfigError, MissingDependencyError, UnavailableError, UnknownTargetError
from kiln.targets import (
    CAPABILITIES,
    MARKERS,
    REGISTRY,
    Package,
    availability,
    available_here,
    check_config,
    check_target,
    toolchain_modules,
)
from kiln.targets.base import Target, TargetOptions
from kiln.targets.shipping import DEFAULT_RULE, Serving
from tests.conftest import CNN

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
TOOLCHAINS = toolchain_modules()


@pytest.mark.parametrize("name", list(REGISTRY))
def test_row_names_a_module_with_a_target_and_an_options_model(name: str) -> None:
    module = importlib.import_module(REGISTRY[name].module)
    assert isinstance(module.TARGET, Target)
    assert issubclass(module.TARGET.options_model, TargetOptions)
    assert module.TARGET.options_model.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_importing_a_target_module_imports_no_toolchain(name: str) -> None:
    code = f"import sys, {REGISTRY[name].module}; print([m for m in {TOOLCHAINS!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_package_is_installed_by_its_extra(name: str) -> None:
    spec = REGISTRY[name]
    for precision in spec.precision_names:
        for package in spec.packages_for(precision):
            if package.extra is None:
                continue
            assert package.extra in EXTRAS, f"{name}: extra {package.extra!r} is not in pyproject.toml"
            pinned = " ".join(EXTRAS[package.extra])
            assert any(dist in pinned for dist in package.dists), (
                f"kiln[{package.extra}] installs none of {package.dists}"
            )


@pytest.mark.parametrize("name", list(REGISTRY))
def test_capabilities_and_precisions_are_known(name: str) -> None:
    spec = REGISTRY[name]
    for need in (*spec.build_needs, *spec.run_needs):
        assert need in CAPABILITIES
    assert len(set(spec.precision_names)) == len(spec.precision_names)
    assert {p for p, _ in spec.known_issues} <= set(spec.precision_names)


@pytest.mark.parametrize(
    "package",
    sorted(
        {p for s in REGISTRY.values() for p in s.packages}
        | {p for s in REGISTRY.values() for prec in s.precisions for p in prec.needs},
        key=lambda p: p.module,
    ),
)
def test_an_installed_package_is_found_under_a_distribution_name(package: Package) -> None:
    # Import names are not distribution names (tensorrt is installed as tensorrt-cu12): the
    # version recorded in cache keys and manifests must be found.
    if not package.installed:
        pytest.skip(f"{package.module} is not installed here")
    found = []
    for dist in package.dists:
        try:
            found.append(importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            continue
    assert found, f"{package.module} is installed but none of {package.dists} is a distribution here"


def test_a_missing_package_blocks_the_build_and_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    availability.cache_clear()
    monkeypatch.setattr(Package, "installed", property(lambda self: self.module != "onnxruntime"))
    try:
        avail = availability("onnxruntime")
        assert not avail.build and not avail.run
        assert "kiln[onnxruntime]" in avail.reason
        with pytest.raises(MissingDependencyError) as err:
            avail.require("onnxruntime")
        assert err.value.exit_code == 5
    finally:
        availability.cache_clear()


def test_a_missing_precision_package_blocks_only_that_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    availability.cache_clear()
    monkeypatch.setattr(Package, "installed", property(lambda self: self.module != "torchao"))
    try:
        assert availability("aoti", "fp32").build == availability("aoti").build
        assert not availability("aoti", "int8").build
        assert "kiln[aoti-int8]" in availability("aoti", "int8").reason
    finally:
        availability.cache_clear()


def test_missing_run_hardware_allows_the_build_and_refuses_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    availability.cache_clear()
    monkeypatch.setitem(CAPABILITIES, "macos", (lambda: False, "macOS"))
    monkeypatch.setattr(Package, "installed", property(lambda self: True))
    try:
        avail = availability("coreml")
        assert avail.build and not avail.run
        avail.require("coreml")
        with pytest.raises(UnavailableError) as err:
            avail.require("coreml", run=True)
        assert "macOS" in str(err.value) and not isinstance(err.value, MissingDependencyError)
    finally:
        availability.cache_clear()


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(UnknownTargetError, match="did you mean 'openvino'"):
        check_target("openvin", "fp32")
    with pytest.raises(UnknownTargetError, match="choose one of: fp32, fp16, int8, int8-dynamic"):
        check_target("onnxruntime", "int3")


def test_a_program_target_on_an_onnx_source_is_refused_before_export(tmp_path: Path) -> None:
    config = parse_config({"model": {"name": "m", "source": "model.onnx"}, "target": [{"name": "aoti"}]}, tmp_path)
    with pytest.raises(ConfigError, match=r"aoti builds from the captured torch\.export program"):
        check_config(config, "onnx")


def test_a_calibrating_precision_without_calibration_is_refused(tmp_path: Path) -> None:
    base = {k: v for k, v in CNN.items() if k != "calibration"}
    config = parse_config({**base, "target": [{"name": "openvino", "precision": "int8"}]}, tmp_path)
    with pytest.raises(ConfigError, match=r"openvino:int8 calibrates on data"):
        check_config(config, "python")
    weights = parse_config({**base, "target": [{"name": "openvino", "precision": "int8-weights"}]}, tmp_path)
    check_config(weights, "python")


def test_capability_markers_are_registered_with_pytest() -> None:
    markers = " ".join(PYPROJECT["tool"]["pytest"]["ini_options"]["markers"])
    for marker in MARKERS.values():
        assert f"{marker}:" in markers


def test_a_precision_that_builds_only_on_macos_is_refused_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    availability.cache_clear()
    monkeypatch.setitem(CAPABILITIES, "macos", (lambda: False, "macOS"))
    monkeypatch.setattr(Package, "installed", property(lambda self: True))
    try:
        assert availability("coreml", "int8").build  # weight-only compression converts anywhere
        w8a8 = availability("coreml", "w8a8")
        assert not w8a8.build and "macOS" in w8a8.reason and not w8a8.missing_package
        with pytest.raises(UnavailableError, match="coreml:w8a8"):
            w8a8.require("coreml:w8a8")
    finally:
        availability.cache_clear()


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_row_says_how_its_artifacts_ship(name: str) -> None:
    spec = REGISTRY[name]
    assert spec.runtime is not DEFAULT_RULE, f"{name}: declare which runtime versions load its artifacts"
    assert spec.runtime.package is None or spec.runtime.package in {p.module for p in spec.packages}
    served = spec.serving
    assert isinstance(served, Serving) or served.startswith("a"), f"{name}: a Serving, or why no server loads it"


# "Can it run here": one answer, available_here, that every command asks.


def test_available_here_narrows_the_row_by_what_the_options_need(monkeypatch: pytest.MonkeyPatch) -> None:
    availability.cache_clear()
    monkeypatch.setattr(Package, "installed", property(lambda self: True))
    try:
        xnnpack = available_here(TargetConfig(name="executorch"))
        assert xnnpack.build and xnnpack.run and xnnpack.reason == ""
        vulkan = available_here(TargetConfig(name="executorch", options={"delegate": "vulkan"}))
        assert vulkan.build and not vulkan.run and "Vulkan GPU" in vulkan.reason
        vulkan.require("executorch")  # it builds
        with pytest.raises(UnavailableError, match="Vulkan GPU") as err:
            vulkan.require("executorch", run=True)
        assert not isinstance(err.value, MissingDependencyError)
    finally:
        availability.cache_clear()


def test_a_built_artifact_runs_without_the_packages_only_its_precision_builds_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    availability.cache_clear()
    monkeypatch.setattr(Package, "installed", property(lambda self: self.module != "nncf"))
    try:
        here = available_here(TargetConfig(name="openvino", precision="int8-weights"))
        assert not here.build and here.run and "kiln[openvino]" in here.reason and here.missing_package
        here.require("openvino", run=True)
        with pytest.raises(MissingDependencyError, match="nncf"):
            here.require("openvino")
    finally:
        availability.cache_clear()


def test_without_the_runtime_nothing_builds_or_runs_and_the_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    availability.cache_clear()
    monkeypatch.setattr(Package, "installed", property(lambda self: self.module != "openvino"))
    try:
        here = available_here(TargetConfig(name="openvino"))
        assert not here.build and not here.run
        with pytest.raises(MissingDependencyError, match=r"kiln\[openvino\]"):
            here.require("openvino", run=True)
    finally:
        availability.cache_clear()


def test_the_plan_validates_each_target_s_options_once_and_asks_available_here(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import kiln.targets as registry
    from kiln.pipeline.planning import plan

    calls: list[str] = []
    validate = registry.target_options

    def counted(target: TargetConfig) -> TargetOptions:
        calls.append(target.key)
        return validate(target)

    monkeypatch.setattr(registry, "target_options", counted)
    rows = [{"name": "onnxruntime", "precision": "int8"}, {"name": "executorch", "options": {"delegate": "vulkan"}}]
    config = parse_config({**CNN, "target": rows}, tmp_path)
    planned = plan(config, tmp_path / "build")
    assert sorted(calls) == sorted(planned.targets)  # once each: kiln bench reads the plan's answer
    for key, tp in planned.targets.items():
        assert tp.available == available_here(tp.target, tp.options), key
