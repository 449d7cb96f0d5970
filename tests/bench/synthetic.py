"""Synthetic results and manifests for tests that need no toolchain, built through the models."""

from __future__ import annotations

from typing import Any

from kiln.config import BenchSettings, Tolerance
from kiln.manifest import EvaluationResult, Execution, Gate, Manifest, OutputFigures, ParityResult, PruneReport
from kiln.report.roofline import count_against_peak
from kiln.results import (
    Accuracy,
    Fingerprint,
    Gates,
    Latency,
    MachineLoad,
    MeasuredCell,
    MeasuredPeak,
    Peak,
    Results,
    RuntimeInfo,
    TheoreticalPeak,
)
from kiln.spec import Signature

# A quiet machine over a measurement: nothing else ran, nothing was stolen.
QUIET = MachineLoad(
    load_average_before=[0.1, 0.1, 0.1],
    load_average_after=[0.2, 0.1, 0.1],
    cpus=2,
    timed_seconds=5.0,
    other_cpus=0.02,
    steal_share=0.0,
)


def latency(p50: float, batch: int = 1, **extra: Any) -> Latency:
    figures: dict[str, Any] = {
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
    }
    return Latency(**{**figures, **extra})


def cell(key: str, batch: int, p50: float, **extra: Any) -> MeasuredCell:
    """A measured cell as the harness makes it, with the analysis figures of a finished run."""
    target, precision = key.split("-")[:2]
    fields: dict[str, Any] = {
        "key": key,
        "target": target,
        "precision": precision,
        "batch": batch,
        "mode": "latency",
        "threads": 2,
        "latency": latency(p50, batch),
        "first_inference_ms": p50 * 3,
        "load_s": 0.1,
        "import_s": 0.5,
        "warmup_iters": 10,
        "peak_rss_bytes": 300 * 2**20,
        "rss_before_load_bytes": 80 * 2**20,
        "runtime": RuntimeInfo(threads=2),
        "size_bytes": 4_000_000,
        "execution_precision": precision,
        "parity_passed": True,
        "parity_worst": "max_abs 1e-6",
        "accuracy": Accuracy(metric="top1", samples=100, eager=0.95, value=0.95, drop=0.0),
        "flops": 1_000_000,
        "gflops": 1.0,
        "roofline_fraction": 0.01,
    }
    return MeasuredCell(**{**fields, **extra})


def synthetic_results(**overrides: Any) -> Results:
    """A results document: eager and onnxruntime at batch 1, its fractions of peak counted as
    ``kiln bench`` counts them."""
    fields: dict[str, Any] = {
        "kiln_version": "0.1.0",
        "created": "2026-11-22T12:00:00Z",
        "model": "synthetic",
        "source": "model.py:build",
        "config": "kiln.toml",
        "settings": BenchSettings(min_seconds=1.0, warmup_seconds=0.2).resolve(physical_cores=2),
        "fingerprint": Fingerprint(
            id="test-cpu-2c-00000000",
            cpu="Test CPU",
            arch="x86_64",
            flags={"avx2": True, "avx512f": False},
            physical_cores=2,
            logical_cores=2,
            memory_gib=16.0,
            gpus=[],
            os="Linux 6.1",
            python="3.11.9",
            toolchain={"torch": "2.13.0", "onnxruntime": "1.31.1"},
        ),
        "peak": Peak(
            measured=MeasuredPeak(fp32_gflops=100.0, threads=2), theoretical=TheoreticalPeak(fp32_gflops=150.0)
        ),
        "flops": {1: 1_000_000},
        "gates": Gates(max_metric_drop=0.01),
        "cells": [
            cell("eager-fp32", 1, 2.0, speedup_vs_eager=1.0),
            cell("onnxruntime-fp32", 1, 1.0, speedup_vs_eager=2.0),
        ],
    }
    results = Results(**{**fields, **overrides})
    count_against_peak(results.cells, results.peak)
    return results


def manifest(key: str, execution_precision: str | None = None, pruned: bool = False, **extra: Any) -> Manifest:
    """A built artifact's manifest: parity passed (worst max_abs 1e-06), top1 0.95 -> 0.94."""
    target, precision = key.split("-")[:2]
    parity = ParityResult(
        passed=True,
        cases=3,
        tolerance=Tolerance(max_abs=1e-4),
        outputs={"logits": OutputFigures(max_abs=1e-6, max_rel=1e-5, cosine=1.0)},
        breaches=[],
        worst="max_abs 1e-06",
    )
    evaluation = EvaluationResult(metric="top1", samples=100, eager=0.95, value=0.94, drop=0.01, max_drop=0.02)
    prune = PruneReport(
        method="channel", amount=0.3, importance="magnitude", scope="layer", steps=1, params_before=10, params_after=7
    )
    fields: dict[str, Any] = {
        "kiln_version": "0.1.0",
        "created": "2026-11-22T12:00:00Z",
        "model": "synthetic",
        "source": "model.py:build",
        "export_key": "e" * 64,
        "cache_key": "c" * 64,
        "target": target,
        "precision": precision,
        "options": {},
        "main_file": "model.onnx",
        "signature": Signature.from_dict(
            {"inputs": [{"name": "x", "shape": ["batch", 4]}], "dims": {"batch": {"min": 1, "max": 8}}}
        ),
        "toolchain": {},
        "execution": Execution(execution_precision=execution_precision or precision),
        "gate": Gate(passed=True, parity=parity, evaluation=evaluation),
        "prune": prune if pruned else None,
        "export_dir": "export-channel30" if pruned else "export",
        "build_seconds": 0.1,
        "files": [],
        "size_bytes": 1234,
    }
    return Manifest(**{**fields, **extra})
