"""Whether this host's int8 kernels saturate, and what each quantizer does about it.

On x86-64 CPUs without a VNNI dot product (AVX512-VNNI, AVX-VNNI or AMX-INT8), ONNX Runtime's
MLAS and OpenVINO's CPU plugin multiply uint8 activations by int8 weights with ``vpmaddubsw``,
which adds each pair of products into a *saturating* int16: 2 x 255 x 127 = 64770 does not fit in
32767, so a full-range activation meeting a full-range weight is clamped. Measured on an AVX2-only
AMD EPYC: a two-layer MLP's static int8 ONNX fell to cosine 0.85 against eager (gate 0.98) and
every int8 conformance case of ONNX Runtime and OpenVINO failed; with 7-bit weights all passed.

The vendors' own fixes, applied only where the build host saturates (the parity gate runs on the
build host, so the artifact is checked as built):

- ONNX Runtime: ``reduce_range`` (7-bit weights), its documented remedy for non-VNNI machines.
- OpenVINO: NNCF's ``overflow_fix`` = ``enable`` (half the weight range in every Conv and MatMul;
  NNCF's default fixes only the first layer).
- PT2E's x86 quantizer (the QAT Q/DQ ONNX that ONNX Runtime runs): ``reduce_range`` (7-bit
  activations), the knob that quantizer offers.

A target's option (``reduce_range``, ``overflow_fix``) overrides the detection; the manifest
records what was used and why. ARM (``sdot``/``udot``) and VNNI hosts accumulate in int32 and do
not saturate.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from functools import cache
from pathlib import Path

DOT_PRODUCT = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products that accumulate in int32
X86 = ("x86_64", "amd64", "i386", "i686")


def saturates(flags: Iterable[str], arch: str) -> bool:
    """True where int8 u8 x s8 products go through a saturating int16 (x86 without VNNI)."""
    if arch.lower() not in X86:
        return False
    return not set(flags) & set(DOT_PRODUCT)


@cache
def host_saturates() -> bool:
    """:func:`saturates` for this machine, from ``/proc/cpuinfo``'s flags (False where unreadable:
    no evidence of saturation is no reason to lose a bit of every weight)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    line = next((ln for ln in text.splitlines() if ln.split(":")[0].strip() == "flags"), None)
    if line is None:
        return False
    return saturates(line.partition(":")[2].split(), platform.machine())


REASON = "build host has no VNNI int8 dot product (u8 x s8 pairs saturate in int16)"


def decide(option: bool | None) -> tuple[bool, str]:
    """(apply the fix, why) for a target option that is None (detect), True or False."""
    if option is not None:
        return option, "set in options"
    found = host_saturates()
    return found, REASON if found else "build host has a VNNI int8 dot product (no saturation)"
