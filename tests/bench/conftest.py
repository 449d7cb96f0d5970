"""Shared fixtures: one tiny model built and benchmarked once per session (eager + ONNX Runtime)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kiln.results import Results

TINY_MODEL = textwrap.dedent(
    '''
    """A seeded 2-layer CNN (about 1,300 parameters) with an evaluation set it labels itself."""
    import numpy as np
    import torch
    from torch import nn


    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)
        ).eval()


    def evaluation():
        rng = np.random.default_rng(1)
        model = build()
        for _ in range(4):
            x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
            with torch.no_grad():
                labels = model(torch.from_numpy(x)).argmax(1).numpy()
            yield {"x": x}, labels
    '''
)

TINY_CONFIG = textwrap.dedent(
    """
    [model]
    name = "tiny"
    source = "tiny_model.py:build"
    inputs = [{ name = "x", shape = ["batch", 1, 8, 8], dtype = "float32" }]
    dims = { batch = { min = 1, opt = 1, max = 8 } }

    [evaluation]
    source = "tiny_model.py:evaluation"
    metric = "top1"

    [[target]]
    name = "onnxruntime"

    [bench]
    batch = [1, 4]
    threads = 1
    min_seconds = 0.2
    min_iters = 10
    warmup_seconds = 0.05
    rounds = 2

    [gates]
    max_metric_drop = 0.01
    """
)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny_model.py").write_text(TINY_MODEL)
    (folder / "kiln.toml").write_text(TINY_CONFIG)
    return folder


@pytest.fixture(scope="session")
def tiny_results(tiny_project: Path) -> tuple[Results, Path]:
    """A real ``kiln bench`` run: build eager + onnxruntime, measure both at batches 1 and 4."""
    from kiln.bench.run import BenchRun, bench

    # The measured-peak cache goes to a fresh folder: the test does not read or write ~/.cache.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tiny_project / "cache"))
        return bench(tiny_project / "kiln.toml", BenchRun(out=tiny_project / "build"))
