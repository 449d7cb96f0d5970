"""``hf:`` folders per task: the task is detected from ``config.architectures``, the signature and
output names follow the task, and each encoder task builds for eager and ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kiln.capture.hf import _image_size, resolve_task
from kiln.capture.sources import load_source
from kiln.config import ModelConfig, parse_config
from kiln.errors import SourceError
from kiln.pipeline.build import build

transformers = pytest.importorskip("transformers")

WORDS = "kiln fires a pytorch model into artifacts for every runtime . the quick brown fox jumps over lazy dog"
TEXT_HEADS = {
    "token-classification": "BertForTokenClassification",
    "question-answering": "BertForQuestionAnswering",
    "fill-mask": "BertForMaskedLM",
}
OUTPUTS = {
    "token-classification": ["logits"],
    "question-answering": ["start_logits", "end_logits"],
    "fill-mask": ["logits"],
    "image-classification": ["logits"],
}


def _bert_config(**extra: Any) -> Any:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS.split()))]
    return transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **extra,
    ), vocab


def _save_tokenizer(folder: Path, vocab: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 reads the vocabulary from ``vocab=`` (a path or a dict); ``vocab_file=`` is ignored.
    transformers.BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)


def _text_folder(root: Path, task: str) -> Path:
    import torch

    torch.manual_seed(0)
    folder = root / task
    config, vocab = _bert_config()
    getattr(transformers, TEXT_HEADS[task])(config).save_pretrained(folder)
    _save_tokenizer(folder, vocab)
    return folder


def _image_folder(root: Path) -> Path:
    import torch

    torch.manual_seed(0)
    folder = root / "image-classification"
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    # What ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained writes; the class
    # itself needs torchvision in transformers 5, which kiln does not depend on.
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    made = {task: _text_folder(root, task) for task in TEXT_HEADS}
    made["image-classification"] = _image_folder(root)
    return made


@pytest.mark.parametrize(
    ("architecture", "task"),
    [
        ("BertForTokenClassification", "token-classification"),
        ("XLNetForQuestionAnsweringSimple", "question-answering"),  # from the table, not the suffix
        ("XLMWithLMHeadModel", "fill-mask"),  # in the masked and the causal LM tables
        ("DeiTForImageClassificationWithTeacher", "image-classification"),
        ("MyCustomForImageClassification", "image-classification"),  # by suffix, in no table
        ("BertForSequenceClassification", "text-classification"),
        ("GPT2LMHeadModel", "text-generation"),
        ("LlamaForCausalLM", "text-generation"),
        ("BertModel", "feature-extraction"),
    ],
)
def test_resolve_task_follows_the_architecture_when_auto(architecture: str, task: str) -> None:
    assert resolve_task(SimpleNamespace(architectures=[architecture]), "auto") == task


def test_resolve_task_is_feature_extraction_when_no_architecture_is_known() -> None:
    assert resolve_task(SimpleNamespace(architectures=None), "auto") == "feature-extraction"
    assert resolve_task(SimpleNamespace(), "auto") == "feature-extraction"


def test_resolve_task_keeps_the_given_task_over_the_architecture() -> None:
    config = SimpleNamespace(architectures=["BertForMaskedLM"])
    assert resolve_task(config, "token-classification") == "token-classification"


@pytest.mark.parametrize("task", list(TEXT_HEADS))
def test_text_task_loads_with_tokenizer_inputs_and_plain_outputs(folders: dict[str, Path], task: str) -> None:
    loaded = load_source(ModelConfig(name="m", source=f"hf:{folders[task]}"), Path("."))
    sig = loaded.signature
    assert sig.input_names == ["input_ids", "token_type_ids", "attention_mask"]
    assert all(spec.shape == ["batch", "sequence"] and spec.dtype == "int64" for spec in sig.inputs)
    assert (sig.dims["batch"].max, sig.dims["sequence"].max) == (8, 64)
    out = loaded.module(*loaded.example)
    assert list(out) == OUTPUTS[task]
    batch, seq = loaded.example[0].shape
    width = {"token-classification": 2, "fill-mask": len(_bert_config()[1])}.get(task)
    assert all(v.shape[:2] == (batch, seq) for v in out.values())
    assert width is None or out["logits"].shape[-1] == width


def test_image_classification_loads_pixel_values_from_the_processor_without_a_tokenizer(
    folders: dict[str, Path],
) -> None:
    folder = folders["image-classification"]
    assert not (folder / "tokenizer.json").exists()
    loaded = load_source(ModelConfig(name="vit", source=f"hf:{folder}"), Path("."))
    (spec,) = loaded.signature.inputs
    assert (spec.name, spec.dtype, spec.shape) == ("pixel_values", "float32", ["batch", 3, 32, 32])
    assert not loaded.signature.dims["batch"].static
    out = loaded.module(*loaded.example)
    assert list(out) == ["logits"] and tuple(out["logits"].shape) == (loaded.example[0].shape[0], 3)


def test_given_task_overrides_detection(folders: dict[str, Path]) -> None:
    model = ModelConfig(name="m", source=f"hf:{folders['fill-mask']}", task="feature-extraction")
    loaded = load_source(model, Path("."))
    assert list(loaded.module(*loaded.example)) == ["last_hidden_state", "pooler_output"]


def test_text_generation_is_handed_to_kiln_causal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, vocab = _bert_config(is_decoder=True, architectures=["BertLMHeadModel"])
    config.save_pretrained(tmp_path)
    _save_tokenizer(tmp_path, vocab)
    seen: dict[str, Any] = {}

    def fake(folder: Path, model: ModelConfig, config: Any, tokenizer: Any) -> str:
        seen.update(folder=folder, config=config, tokenizer=tokenizer)
        return "causal"

    monkeypatch.setattr("kiln.capture.causal.load_causal_lm", fake)
    assert load_source(ModelConfig(name="lm", source=f"hf:{tmp_path}"), Path(".")) == "causal"
    assert seen["folder"] == tmp_path and seen["config"].architectures == ["BertLMHeadModel"]
    assert seen["tokenizer"].vocab_size == len(vocab)


def test_text_task_without_tokenizer_says_how_to_add_one(tmp_path: Path) -> None:
    config, _ = _bert_config(architectures=["BertForTokenClassification"])
    config.save_pretrained(tmp_path)
    with pytest.raises(SourceError, match=r"no tokenizer files; token-classification needs the model's tokenizer"):
        load_source(ModelConfig(name="m", source=f"hf:{tmp_path}"), Path("."))


@pytest.mark.parametrize(
    ("processor", "size"),
    [
        ({"size": {"height": 30, "width": 40}}, (30, 40)),
        ({"do_center_crop": True, "crop_size": {"height": 24, "width": 24}, "size": {"shortest_edge": 32}}, (24, 24)),
        ({"do_center_crop": False, "crop_size": 24, "size": {"shortest_edge": 32}}, (32, 32)),
        ({"size": 20}, (20, 20)),
        (None, (16, 16)),  # no processor: the model config's image_size
    ],
)
def test_image_size_is_what_the_processor_hands_the_model(
    tmp_path: Path, processor: dict | None, size: tuple[int, int]
) -> None:
    if processor is not None:
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    assert _image_size(tmp_path, SimpleNamespace(image_size=16)) == size


def test_image_size_missing_says_how_to_add_it(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"save its image processor there"):
        _image_size(tmp_path, SimpleNamespace())


@pytest.mark.slow
@pytest.mark.parametrize("task", list(OUTPUTS))
def test_task_builds_for_eager_and_onnxruntime_within_the_gate(
    folders: dict[str, Path], tmp_path: Path, task: str
) -> None:
    config = parse_config(
        {
            "model": {"name": "m", "source": f"hf:{folders[task]}"},
            "target": [{"name": "eager"}, {"name": "onnxruntime"}],
        },
        tmp_path,
    )
    results = build(config, tmp_path / "build")
    for r in results:
        assert r.error is None, r.error
        assert r.manifest.gate.passed, r.manifest.gate.breaches
    manifest = next(r.manifest.to_json() for r in results if r.target.key == "onnxruntime-fp32")
    assert manifest["signature"]["outputs"] == OUTPUTS[task]
