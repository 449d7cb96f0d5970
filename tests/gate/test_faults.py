"""The fp32 gate still catches real faults on a causal LM, now that its logits are judged on real
prompts, teacher-forced, against a tolerance scaled to their magnitude and vocabulary (and the step
graph on a random cache by shapes, non-finite values and cosine): a tiny Llama built for ONNX
Runtime at fp32 passes; the same artifact with one layer's weights perturbed, and one that drops its
KV cache after the prefill, fail the build's gate (:meth:`kiln.gate.reference.Reference.check`),
each with the figure that caught it named."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.capture.exporters import ExportBundle
from kiln.config import parse_config
from kiln.gate.reference import BuildData, Reference
from kiln.manifest import Gate
from kiln.pipeline.build import build
from kiln.spec import Arrays
from kiln.targets import FP32, availability, implementation
from kiln.targets.base import Artifact, Runner, RunOptions
from tests.generative.models import HIDDEN, INTERMEDIATE, tiny_llama_folder

pytestmark = pytest.mark.slow

ORT_KEY = "onnxruntime-fp32"


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny Llama built for ONNX Runtime fp32, and the build's eager reference for it."""

    if not availability("onnxruntime").run:
        pytest.skip(f"onnxruntime: {availability('onnxruntime').reason}")
    folder = tmp_path_factory.mktemp("faults")
    tiny_llama_folder(folder / "llama")
    data = {
        "model": {
            "name": "lm",
            "source": "hf:llama",
            "dims": {"sequence": {"min": 1, "max": 8}, "past": {"min": 0, "max": 31}},
        },
        "generation": {"new_tokens": 8, "heldout_tokens": 64},
        "target": [{"name": "onnxruntime"}],
    }
    config = parse_config(data, folder)
    (result,) = build(config, folder / "build")
    assert result.manifest is not None, result.error
    bundle = ExportBundle.open(folder / "build" / "lm" / "export")
    reference = Reference(config, bundle, bundle.program().module(), BuildData())
    return {"manifest": result.manifest, "artifact": folder / "build" / "lm" / ORT_KEY, "reference": reference}


def _gate(lm: dict[str, Any], runner: Runner) -> Gate:
    with runner:
        return lm["reference"].check(runner, FP32, real_data=False)


def _load(folder: Path) -> Runner:
    return implementation("onnxruntime").load(Artifact.from_manifest(folder), RunOptions(threads=1))


class DroppedCache(Runner):
    """The artifact, but every decode step (one token after a prefill) runs on an empty cache."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def infer(self, inputs: Arrays) -> Arrays:
        if inputs["input_ids"].shape[1] == 1:
            inputs = {k: v[:, :, :0] if k.startswith("past.") else v for k, v in inputs.items()}
        return self.runner.infer(inputs)

    def close(self) -> None:
        self.runner.close()


def test_the_fp32_artifact_passes_with_its_logits_at_rounding_distance(lm: dict[str, Any]) -> None:
    gate = lm["manifest"].gate
    assert gate.passed, gate.breaches
    assert FP32.max_rel is not None and gate.generation is not None and gate.generation.exact
    assert gate.generation.scaled_rel is not None and gate.generation.scaled_rel < FP32.max_rel / 10
    assert gate.parity is not None and gate.parity.outputs["logits"].cosine > 0.99999


def test_one_layer_s_weights_perturbed_fail_the_gate(lm: dict[str, Any], tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    folder = tmp_path / ORT_KEY
    shutil.copytree(lm["artifact"], folder)
    path = Artifact.from_manifest(folder).main
    model = onnx.load(str(path))
    # The exporter folds each projection into a transposed initializer: the last [intermediate,
    # hidden] one is the second layer's down_proj.
    weight = [i for i in model.graph.initializer if list(i.dims) == [INTERMEDIATE, HIDDEN]][-1]
    values = numpy_helper.to_array(weight)
    # 0.1 % noise on one matrix of one layer: a fault far below what flips a token.
    noisy = values * (1 + 1e-3 * np.random.default_rng(0).standard_normal(values.shape))
    weight.CopyFrom(numpy_helper.from_array(noisy.astype(values.dtype), weight.name))
    onnx.save(model, str(path))
    gate = _gate(lm, _load(folder))
    assert not gate.passed and gate.generation is not None
    # Tokens, cosine and perplexity stay within fp32's bars: the scaled logits figure catches it.
    assert gate.breaches and all("teacher-forced logits scaled_rel" in b for b in gate.breaches), gate.breaches
    assert gate.generation.exact and gate.generation.min_cosine > 0.99999


def test_a_cache_dropped_after_the_prefill_fails_the_gate(lm: dict[str, Any]) -> None:
    gate = _gate(lm, DroppedCache(_load(lm["artifact"])))
    assert not gate.passed
    assert gate.generation is not None and gate.generation.forced_top1 < 1
    assert any("greedy tokens differ" in b for b in gate.breaches), gate.breaches
    # Every prompt's logits, teacher-forced, leave rounding distance from the first decode step on.
    prompts = len(gate.generation.per_prompt)
    assert sum("teacher-forced logits scaled_rel" in b for b in gate.breaches) == prompts, gate.breaches
