"""Fleet fixtures: a tiny model folder of its own (its cache keys hash only its own files), a
suite over it, and Ray clusters that are always shut down."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CNN, MODELS, write_config

QUICK = {"min_seconds": 0.2, "min_iters": 5, "warmup_seconds": 0.05, "rounds": 1}


def tiny_suite(root: Path, targets: list[dict[str, Any]], name: str = "cnn") -> Path:
    """A suite of one tiny CNN (copied away from tests/, so other test files do not change its
    keys) with these targets, measured briefly at batch 1 on one thread."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(MODELS, folder / "models.py")
    model = {**CNN["model"], "name": name, "source": "models.py:tiny_cnn"}
    config = {
        "model": model,
        "calibration": {**CNN["calibration"], "source": "models.py:cnn_calibration"},
        "evaluation": {**CNN["evaluation"], "source": "models.py:cnn_evaluation"},
        "target": targets,
        "bench": {"batch": [1], "threads": 1},
    }
    write_config(folder, config)
    settings = "\n".join(f"{k} = {v}" for k, v in QUICK.items())
    suite = root / "suite.toml"
    suite.write_text(f'[settings]\n{settings}\n\n[[model]]\nconfig = "{name}/kiln.toml"\n')
    return suite


@pytest.fixture
def ray_shutdown():
    """Whatever a test started, Ray is shut down after it."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_store() -> Iterator[tuple[str, dict[str, str]]]:
    """A bucket on moto's S3-compatible server on 127.0.0.1, and the fsspec options to reach it."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    import boto3

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, **creds).create_bucket(Bucket="kiln-fleet")
    yield "s3://kiln-fleet/store", {"endpoint_url": endpoint, "key": "test", "secret": "test"}
    server.stop()
