"""Hardware as Ray resources: what a node advertises from its fingerprint, what each task asks
for from the registry, and the reason given when no node can serve a task."""

from __future__ import annotations

from kiln.fleet.resources import (
    SHARE,
    SLOT,
    bench_request,
    build_request,
    export_request,
    kinds,
    node_resources,
    run_request,
    serves,
    unmet,
)
from kiln.results import Fingerprint


def _fingerprint(cpu: str = "Intel Xeon", gpus: list[dict[str, str]] | None = None, **flags: bool) -> Fingerprint:
    return Fingerprint(
        id=f"{cpu.lower().replace(' ', '-')}-2c-0000",
        cpu=cpu,
        arch="x86_64",
        flags={"avx512_vnni": False, "amx_int8": False, **flags},
        physical_cores=2,
        logical_cores=2,
        memory_gib=8.0,
        gpus=gpus or [],
        os="Linux",
        python="3.11",
        toolchain={},
    )


def test_node_resources_name_the_kind_the_isa_the_gpus_and_the_packages() -> None:
    fp = _fingerprint(avx512_vnni=True, gpus=[{"name": "NVIDIA L4"}, {"name": "NVIDIA L4"}])

    got = node_resources(fp, ["cuda", "cxx"], ["onnxruntime", "tensorrt"])

    assert got[SLOT] == 1.0 and got["kiln_kind_intel-xeon-2c-0000"] == 1.0
    assert got["kiln_isa_avx512_vnni"] == 1.0 and "kiln_isa_amx_int8" not in got
    assert got["kiln_gpu_nvidia-l4"] == 2.0
    assert got["kiln_cap_cuda"] == got["kiln_pkg_tensorrt"] == got["kiln_pkg_torch"] == 1.0


def test_node_resources_use_the_kind_given_over_the_fingerprint() -> None:
    got = node_resources(_fingerprint(), [], [], kind="Edge Board")

    assert "kiln_kind_edge-board" in got and "kiln_kind_intel-xeon-2c-0000" not in got


def test_a_tensorrt_build_asks_for_an_nvidia_gpu_and_its_package() -> None:
    request = build_request("tensorrt", "fp16")

    assert request.resources["kiln_cap_cuda"] == SHARE and "kiln_pkg_tensorrt" in request.resources
    assert request.resources[SLOT] == SHARE  # a build holds a share of its node, not all of it


def test_a_precision_asks_for_its_own_packages_and_capabilities() -> None:
    assert "kiln_pkg_nncf" in build_request("openvino", "int8").resources
    assert "kiln_pkg_nncf" not in build_request("openvino", "fp32").resources
    assert "kiln_cap_macos" in build_request("coreml", "w8a8").resources
    assert "kiln_cap_macos" not in build_request("coreml", "fp16").resources
    assert "kiln_cap_macos" in run_request("coreml").resources


def test_a_bench_takes_the_whole_slot_so_no_build_shares_its_node() -> None:
    node = {"CPU": 2.0, **node_resources(_fingerprint(), ["cxx"], ["onnxruntime"])}
    bench = bench_request("intel-xeon-2c-0000")

    assert bench.resources[SLOT] == 1.0 and serves(bench, node)
    # Ray grants SLOT amounts that sum to at most 1: a bench (1) and a build (SHARE) never overlap.
    assert bench.resources[SLOT] + export_request().resources[SLOT] > node[SLOT]


def test_unmet_says_what_no_node_has_and_none_when_one_has_it() -> None:
    cpu = {"CPU": 2.0, **node_resources(_fingerprint(), ["cxx"], ["onnxruntime"])}
    gpu_fp = _fingerprint("AMD EPYC", gpus=[{"name": "NVIDIA L4"}])
    gpu = {"CPU": 8.0, **node_resources(gpu_fp, ["cuda"], ["tensorrt"])}

    why = unmet(build_request("tensorrt", "fp16"), [cpu])

    assert why is not None and "NVIDIA GPU" in why and "kiln node" in why
    assert unmet(build_request("tensorrt", "fp16"), [cpu, gpu]) is None
    assert unmet(build_request("onnxruntime", "fp32"), []) is not None
    assert sorted(kinds([cpu, gpu])) == ["amd-epyc-2c-0000", "intel-xeon-2c-0000"]
