"""Schema-valid synthetic results for tests that need no toolchain."""

from __future__ import annotations

import copy
from typing import Any


def _cell(key: str, batch: int, p50: float, **extra: Any) -> dict[str, Any]:
    target, precision = key.rsplit("-", 1)
    cell = {
        "key": key,
        "target": target,
        "precision": precision,
        "batch": batch,
        "mode": "latency",
        "threads": 2,
        "status": "ok",
        "reason": None,
        "flags": [],
        "latency": {
            "samples": 50,
            "p50_ms": p50,
            "p90_ms": p50 * 1.1,
            "p99_ms": p50 * 1.3,
            "mean_ms": p50 * 1.02,
            "min_ms": p50 * 0.95,
            "max_ms": p50 * 1.5,
            "std_ms": p50 * 0.03,
            "cv": 0.03,
            "throughput": batch * 1e3 / (p50 * 1.02),
            "timed_seconds": 1.0,
            "unstable": False,
        },
        "first_inference_ms": p50 * 3,
        "load_s": 0.1,
        "import_s": 0.5,
        "warmup_iters": 10,
        "peak_rss_bytes": 300 * 2**20,
        "rss_before_load_bytes": 80 * 2**20,
        "runtime": {"threads": 2},
        "size_bytes": 4_000_000,
        "execution_precision": precision,
        "parity_passed": True,
        "parity_worst": "max_abs 1e-6",
        "accuracy": {"metric": "top1", "eager": 0.95, "value": 0.95, "drop": 0.0},
        "simulated": False,
        "flops": 1_000_000,
        "gflops": 1.0,
        "roofline_fraction": 0.01,
        "speedup_vs_eager": None,
    }
    cell.update(extra)
    return cell


def synthetic_results(**overrides: Any) -> dict[str, Any]:
    """A schema-valid results document: eager and onnxruntime at batch 1."""
    results: dict[str, Any] = {
        "schema": "kiln.results/1",
        "kiln_version": "0.1.0",
        "created": "2026-11-22T12:00:00Z",
        "model": "synthetic",
        "source": "model.py:build",
        "config": "kiln.toml",
        "settings": {
            "batches": [1],
            "threads": 2,
            "mode": "latency",
            "requests": 1,
            "min_seconds": 1.0,
            "min_iters": 20,
            "warmup_seconds": 0.2,
            "warmup_iters": 5,
            "rounds": 2,
            "cv_threshold": 0.1,
        },
        "fingerprint": {
            "id": "test-cpu-2c-00000000",
            "cpu": "Test CPU",
            "arch": "x86_64",
            "flags": {"avx2": True, "avx512f": False},
            "physical_cores": 2,
            "logical_cores": 2,
            "memory_gib": 16.0,
            "gpus": [],
            "os": "Linux 6.1",
            "python": "3.11.9",
            "toolchain": {"torch": "2.13.0", "onnxruntime": "1.31.1"},
        },
        "peak": {"measured": {"fp32_gflops": 100.0, "threads": 2}, "theoretical": {"fp32_gflops": 150.0}},
        "flops": {"1": 1_000_000},
        "gates": {"max_metric_drop": 0.01},
        "cells": [
            _cell("eager-fp32", 1, 2.0, speedup_vs_eager=1.0),
            _cell("onnxruntime-fp32", 1, 1.0, speedup_vs_eager=2.0),
        ],
    }
    results.update(overrides)
    return copy.deepcopy(results)
