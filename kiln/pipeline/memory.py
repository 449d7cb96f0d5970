"""Refusing a build that cannot fit in this machine's memory, before any work.

The build's peak resident memory grows with the model's weights: the loaded model's stay resident
for the gate, and each stage adds its own work on top (the ONNX exporter's graph, a quantizer's
output, a runtime's session), freed before the next stage. The estimate is ``BASELINE_BYTES +
FACTOR x`` the weights' bytes in the dtype they are loaded in, both measured (below). The weights are counted without loading them: an ``hf:`` folder's
safetensors headers (its ``*.bin`` files' sizes where it has no safetensors), a GGUF file's tensor
shapes from its header, read here (transformers dequantizes them to fp32); any other source is counted right
after it loads, before export. The budget is what the machine has available
(``MemAvailable``, less where a cgroup's limit leaves less) plus what the build already holds.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config import ModelConfig
from kiln.errors import ResourceError
from kiln.pipeline.progress import gib

# Measured by benchmarks/real_size_llm.py (a watchdog sampling the build's resident set, and the
# stages' own peaks in the manifests) on builds for onnxruntime int4 and openvino int4:
# SmolLM2-135M from its GGUF (0.54 GB of fp32 weights) peaked at 1.96 GiB, a random 1.1 B Llama
# (TinyLlama-1.1B's configuration, 4.40 GB) at 7.74 GiB (1.88x its weights; the int4 compile for
# ONNX Runtime is the highest stage). The line through them has a slope of 1.61 and leaves 1.15 GiB
# for the toolchains themselves (torch, the ONNX exporter, ONNX Runtime, OpenVINO); the factor and
# the baseline are rounded up from it, so the estimate is above both builds' peaks. (Before the
# weights were streamed to disk and freed between stages the slope was 7.1: a 1.1 B build died at
# 24 GB.)
FACTOR = 1.7
BASELINE_BYTES = int(1.25 * 2**30)
# Bytes per element of the dtypes safetensors headers name.
_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


@dataclass(frozen=True)
class Weights:
    """A model's weights as loaded: their element count, bytes, and where the count came from."""

    parameters: int
    bytes: int
    counted: str  # "safetensors headers", "the GGUF header", "the loaded model" ...


def estimate(weights: Weights) -> int:
    """The build's peak resident memory, in bytes, for these weights."""
    return BASELINE_BYTES + math.ceil(FACTOR * weights.bytes)


def weights_of_source(model: ModelConfig, root: Path) -> Weights | None:
    """The weights of an ``hf:`` folder or a GGUF file, read from headers (no weights loaded);
    ``None`` for another source (counted once loaded) or one that cannot be read here (its
    loader says why)."""
    from kiln.capture.sources import gguf_file, hf_folder, source_kind

    kind = source_kind(model.source)
    try:
        if kind == "hf":
            return _hf_weights(hf_folder(model.source, root))
        if kind == "gguf":
            return _gguf_weights(gguf_file(model.source, root))
    except (OSError, ValueError, struct.error):
        return None
    return None


def weights_of_module(module: Any) -> Weights:
    """The weights of a loaded ``nn.Module``: its parameters and buffers, each counted once."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}.values()
    return Weights(
        parameters=sum(t.numel() for t in tensors),
        bytes=sum(t.numel() * t.element_size() for t in tensors),
        counted="the loaded model",
    )


def _hf_weights(folder: Path) -> Weights | None:
    files = sorted(folder.glob("*.safetensors"))
    if files:
        counts = [_safetensors_counts(f) for f in files]
        return Weights(sum(c[0] for c in counts), sum(c[1] for c in counts), "safetensors headers")
    pickled = [f for f in folder.glob("*.bin") if f.name.startswith("pytorch_model")]
    if pickled:  # a pickled checkpoint is its tensors' bytes, near enough; fp32 assumed for the count
        size = sum(f.stat().st_size for f in pickled)
        return Weights(size // 4, size, "pytorch_model*.bin sizes")
    return None


def _safetensors_counts(path: Path) -> tuple[int, int]:
    """(elements, bytes) of the tensors a safetensors file declares: its 8-byte header length,
    then the JSON header; the tensors' data is not read."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 * 2**20:  # no real header is this large: not a safetensors file
            raise ValueError(f"{path}: header of {length} bytes")
        header = json.loads(f.read(length))
    elements = size = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        count = math.prod(int(d) for d in info["shape"])
        elements += count
        size += count * _ITEMSIZE.get(info["dtype"], 1)
    return elements, size


def _gguf_weights(path: Path) -> Weights:
    """A GGUF file's tensors as transformers loads them: every one dequantized to fp32."""
    elements = sum(math.prod(shape) for shape in gguf_shapes(path))
    return Weights(elements, elements * 4, "the GGUF header (dequantized to fp32)")


# Sizes of GGUF's fixed-size metadata value types (8 is a string, 9 an array).
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_shapes(path: Path) -> list[tuple[int, ...]]:
    """The shape of every tensor a GGUF file (version 2 or 3) declares, read from its header: the
    metadata is skipped, not decoded (the gguf package's reader decodes a 49 k-token vocabulary
    into arrays first, seconds for SmolLM2). ``ValueError`` for another file."""
    with path.open("rb") as f:
        magic, version, tensors, fields = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"{path}: not a GGUF file of version 2 or 3")
        for _ in range(fields):
            _skip_string(f)  # the key
            _skip_value(f, struct.unpack("<I", f.read(4))[0])
        shapes = []
        for _ in range(tensors):
            _skip_string(f)  # the name
            (dims,) = struct.unpack("<I", f.read(4))
            shapes.append(struct.unpack(f"<{dims}Q", f.read(8 * dims)))
            f.seek(12, 1)  # its type (u32) and data offset (u64)
    return shapes


def _skip_string(f: Any) -> None:
    (length,) = struct.unpack("<Q", f.read(8))
    f.seek(length, 1)


def _skip_value(f: Any, kind: int) -> None:
    if kind in _GGUF_SIZES:
        f.seek(_GGUF_SIZES[kind], 1)
    elif kind == 8:
        _skip_string(f)
    elif kind == 9:
        item, count = struct.unpack("<IQ", f.read(12))
        if item in _GGUF_SIZES:
            f.seek(_GGUF_SIZES[item] * count, 1)
        else:
            for _ in range(count):
                _skip_value(f, item)
    else:
        raise ValueError(f"GGUF metadata of unknown type {kind}")


def available_bytes() -> tuple[int, int] | None:
    """(the memory available, the machine's total), in bytes: ``MemAvailable`` and ``MemTotal``,
    less where a cgroup's limit leaves less; ``None`` where ``/proc/meminfo`` cannot be read
    (not Linux)."""
    try:
        info = _meminfo()
        free, total = info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError):
        return None
    limited = _cgroup_room()
    if limited is not None:
        free, total = min(free, limited[0]), min(total, limited[1])
    return free, total


def _meminfo() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0]) * 1024
    return fields


def _rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _cgroup_room() -> tuple[int, int] | None:
    """(room left, limit) under the tightest memory limit of this process's cgroup and its
    ancestors (v2 ``memory.max``, v1 ``memory.limit_in_bytes``); its reclaimable page cache
    counts as room. ``None`` when no limit is set."""
    best: tuple[int, int] | None = None
    for folder, names in _cgroup_folders():
        try:
            limit_text = (folder / names[0]).read_text().strip()
            if limit_text == "max" or int(limit_text) >= 2**60:
                continue
            limit, usage = int(limit_text), int((folder / names[1]).read_text())
        except (OSError, ValueError):
            continue
        room = max(0, limit - usage + _inactive_file(folder))
        if best is None or room < best[0]:
            best = (room, limit)
    return best


def _cgroup_folders() -> list[tuple[Path, tuple[str, str]]]:
    """This process's cgroup folders with memory files, innermost first, and their file names."""
    found: list[tuple[Path, tuple[str, str]]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, names = Path("/sys/fs/cgroup"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, names = Path("/sys/fs/cgroup/memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        folder = base / path.lstrip("/")
        while True:
            found.append((folder, names))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return found


def _inactive_file(folder: Path) -> int:
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def check_fits(what: str, weights: Weights) -> None:
    """Refuse (one ``ResourceError`` line, exit 8) a build whose estimated peak is more than the
    memory available and what the build already holds; quiet where the machine's memory cannot be
    read."""
    machine = available_bytes()
    if machine is None:
        return
    need = estimate(weights)
    room, total = machine
    if need <= room + _rss_bytes():
        return
    raise ResourceError(
        f"{what}: this build needs about {gib(need)} of memory ({weights.parameters / 1e9:.2f} B parameters, "
        f"{gib(weights.bytes)} of weights from {weights.counted}, x{FACTOR:g} for export and the targets), "
        f"but {gib(room)} of this machine's {gib(total)} is available; build a smaller model, build on a machine "
        f"with at least {math.ceil(need / 2**30)} GiB free, or pass --skip-memory-check if you know better"
    )
