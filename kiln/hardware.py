"""The hardware fingerprint: what every benchmark number and ``kiln doctor`` is tied to."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiln.results import Fingerprint
from kiln.versions import CORE, versions

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _gpus() -> list[dict[str, str]]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    fields = ("name", "driver", "memory", "compute_capability")
    return [dict(zip(fields, (v.strip() for v in line.split(",")), strict=False)) for line in out.splitlines() if line]


def fingerprint(toolchains: Sequence[str]) -> Fingerprint:
    """CPU model and flags, cores, memory, GPUs, OS, Python and the version of kiln's core packages
    and of each of ``toolchains`` (distribution names). ``kiln.targets.fingerprint`` passes the
    registry's (``kiln.targets.toolchain_dists``)."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    fp: dict[str, Any] = {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "flags": {flag: flag in flags for flag in FLAGS},
        "physical_cores": _physical_cores(),
        "logical_cores": os.cpu_count(),
        "memory_gib": round(_memory_bytes() / 2**30, 1),
        "gpus": _gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "toolchain": versions(tuple(dict.fromkeys((*CORE, *toolchains)))),
    }
    fp["id"] = fingerprint_id(fp)
    return Fingerprint.model_validate(fp)


def fingerprint_id(fp: dict[str, Any]) -> str:
    """A short stable name for the hardware alone (toolchain versions excluded)."""
    hw = {k: fp.get(k) for k in ("cpu", "arch", "flags", "physical_cores", "logical_cores", "memory_gib")}
    hw["gpus"] = [g.get("name") for g in fp.get("gpus", [])]
    digest = hashlib.sha256(json.dumps(hw, sort_keys=True).encode()).hexdigest()[:8]
    slug = "".join(c if c.isalnum() else "-" for c in str(fp.get("cpu", "cpu")).lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"{slug[:40]}-{fp.get('logical_cores')}c-{digest}"


def peak_rss_bytes() -> int:
    """This process's peak resident set so far. Linux: ``VmHWM``, which belongs to the process's
    own address space (``ru_maxrss`` carries a parent's peak over through fork and exec: a parent
    that imported torch would set every worker's floor); elsewhere ``getrusage`` (bytes on macOS,
    KiB on Linux)."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
