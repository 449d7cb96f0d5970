"""GGUF sources: a tiny Llama written here as a GGUF file (fp32 and 4-bit), loaded the way
transformers dequantizes it, recorded (type, hash, what the reference is) and built."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.capture.sources import gguf_file, load_source, source_kind
from kiln.config import load_config, parse_config
from kiln.errors import SourceError
from tests.conftest import write_config

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, POSITIONS = 64, 128, 2, 4, 2, 128
SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r", "o n", "Ġ s", "r e", "a t"]
CHAT = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
PROMPT = "the cat sat on the mat"
DIMS = {"sequence": {"min": 1, "max": 16}, "past": {"min": 0, "max": 47}}


def tiny_gguf(path: Path, qtype: str = "F32", seed: int = 0) -> Path:
    """A seeded 2-layer Llama (GQA 4/2, hidden 64) with a byte-level BPE vocabulary of 269 tokens,
    its matrices stored as ``qtype`` (F32, Q8_0 or Q4_0: gguf-py quantizes them)."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = SPECIALS + list(dict.fromkeys(bytes_to_unicode().values())) + [m.replace(" ", "") for m in MERGES]
    quant = gguf.GGMLQuantizationType[qtype]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_file_type(gguf.LlamaFileType[("ALL_" if qtype == "F32" else "MOSTLY_") + qtype])
    for add, value in [
        (writer.add_context_length, POSITIONS),
        (writer.add_block_count, LAYERS),
        (writer.add_embedding_length, HIDDEN),
        (writer.add_feed_forward_length, INTERMEDIATE),
        (writer.add_head_count, HEADS),
        (writer.add_head_count_kv, KV_HEADS),
        (writer.add_rope_dimension_count, HIDDEN // HEADS),
        (writer.add_rope_freq_base, 10000.0),
        (writer.add_layer_norm_rms_eps, 1e-5),
        (writer.add_vocab_size, len(tokens)),
        (writer.add_tokenizer_model, "gpt2"),
        (writer.add_token_list, tokens),
        (writer.add_token_types, [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))),
        (writer.add_token_merges, MERGES),
        (writer.add_unk_token_id, 0),
        (writer.add_bos_token_id, 1),
        (writer.add_eos_token_id, 2),
        (writer.add_add_bos_token, False),
        (writer.add_chat_template, CHAT),
    ]:
        add(value)
    kv = KV_HEADS * HIDDEN // HEADS
    shapes = {"token_embd": (len(tokens), HIDDEN), "output_norm": (HIDDEN,), "output": (len(tokens), HIDDEN)}
    for i in range(LAYERS):
        shapes |= {
            f"blk.{i}.attn_norm": (HIDDEN,),
            f"blk.{i}.ffn_norm": (HIDDEN,),
            f"blk.{i}.attn_q": (HIDDEN, HIDDEN),
            f"blk.{i}.attn_k": (kv, HIDDEN),
            f"blk.{i}.attn_v": (kv, HIDDEN),
            f"blk.{i}.attn_output": (HIDDEN, HIDDEN),
            f"blk.{i}.ffn_gate": (INTERMEDIATE, HIDDEN),
            f"blk.{i}.ffn_up": (INTERMEDIATE, HIDDEN),
            f"blk.{i}.ffn_down": (HIDDEN, INTERMEDIATE),
        }
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        weights = ((1.0 if len(shape) == 1 else 0.0) + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if len(shape) == 1 or quant == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(f"{name}.weight", weights)  # norms stay fp32, as llama.cpp keeps them
        else:
            writer.add_tensor(f"{name}.weight", gguf.quants.quantize(weights, quant), raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _transformers(path: Path) -> tuple[Any, Any]:
    """transformers' own reading of the file: the dequantized model and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _greedy(model: Any, ids: list[int], new_tokens: int) -> list[int]:
    """transformers' greedy tokens: the argmax of the full forward pass, one token at a time."""
    import torch

    out = list(ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """kiln's cache in the test's folder, not ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "kiln" / "gguf"


def test_gguf_sources_are_named_three_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "tiny_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for source, where in [
        ("gguf:models/m.gguf", tmp_path / "models" / "m.gguf"),
        ("models/m.gguf", tmp_path / "models" / "m.gguf"),
        ("gguf:pkg://tiny_gguf_pkg/m.Q4_0.gguf", package / "m.Q4_0.gguf"),
    ]:
        assert source_kind(source) == "gguf"
        assert gguf_file(source, tmp_path) == where
    with pytest.raises(SourceError, match="package 'no_such_package' is not installed"):
        gguf_file("gguf:pkg://no_such_package/m.gguf", tmp_path)


@pytest.mark.parametrize(("qtype", "bits"), [("F32", 32), ("Q8_0", 8), ("Q4_0", 4)])
def test_the_record_reads_the_type_and_the_hash_from_the_file(tmp_path: Path, qtype: str, bits: int) -> None:
    from kiln.capture.gguf import gguf_record

    path = tiny_gguf(tmp_path / f"tiny.{qtype}.gguf", qtype)
    record = gguf_record(path)
    assert (record.quantization, record.bits, record.architecture) == (qtype, bits, "llama")
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    matrices = 2 + 7 * LAYERS
    assert record.tensor_types == (
        {"F32": matrices + 1 + 2 * LAYERS} if qtype == "F32" else {qtype: matrices, "F32": 5}
    )
    assert (f"dequantized from a {bits}-bit file" in record.note) == (bits < 32)


@pytest.mark.parametrize("qtype", ["F32", "Q4_0"])
def test_kiln_loads_what_transformers_dequantizes(tmp_path: Path, cache: Path, qtype: str) -> None:
    import torch

    path = tiny_gguf(tmp_path / f"tiny.{qtype}.gguf", qtype)
    config = parse_config({"model": {"name": "g", "source": f"gguf:{path.name}", "dims": DIMS}}, tmp_path)
    loaded = load_source(config.model, tmp_path)
    reference, tokenizer = _transformers(path)
    assert loaded.kind == "gguf" and loaded.tokenizer is not None and loaded.tokenizer.parent == cache
    # The folder in the cache is a plain transformers folder: no quantization_config, the chat template.
    assert "quantization_config" not in (loaded.tokenizer / "config.json").read_text()
    assert (loaded.tokenizer / "chat_template.jinja").read_text() == CHAT
    ids = tokenizer(PROMPT).input_ids
    assert ids[0] != 1, "no BOS: the file says add_bos_token false"
    mask = [torch.ones(1, len(ids), dtype=torch.int64)] if loaded.signature.cache.attention_mask else []
    args = [torch.tensor([ids]), *mask, torch.arange(len(ids))[None]]
    args += [torch.zeros(1, KV_HEADS, 0, HIDDEN // HEADS)] * (2 * LAYERS)
    with torch.no_grad():
        ours = loaded.module(*args)["logits"]
        theirs = reference(torch.tensor([ids])).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # A second load finds the folder made from the same bytes instead of making it again.
    made = (loaded.tokenizer / "model.safetensors").stat().st_mtime_ns
    again = load_source(config.model, tmp_path)
    assert again.tokenizer == loaded.tokenizer and (again.tokenizer / "model.safetensors").stat().st_mtime_ns == made


def test_a_missing_gguf_package_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.capture.gguf import gguf_record

    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    with pytest.raises(SourceError, match=r"GGUF sources need the gguf package; pip install 'kiln\[hf\]'"):
        gguf_record(path)


@pytest.mark.slow
def test_a_4_bit_gguf_builds_and_its_artifact_generates_transformers_tokens(tmp_path: Path, cache: Path) -> None:
    from kiln.capture.gguf import gguf_record
    from kiln.decoding import generate, session_for
    from kiln.pipeline.build import build
    from kiln.targets import implementation
    from kiln.targets.base import Artifact, RunOptions

    path = tiny_gguf(tmp_path / "tiny.Q4_0.gguf", "Q4_0")
    data = {
        "model": {"name": "lm", "source": "gguf:tiny.Q4_0.gguf", "dims": DIMS},
        "generation": {"new_tokens": 8, "heldout_tokens": 64},
        "target": [{"name": "eager"}, {"name": "onnxruntime"}],
    }
    results = build(load_config(write_config(tmp_path, data)), tmp_path / "build")
    assert [r.status for r in results] == ["built", "built"], [r.error for r in results]
    for result in results:
        manifest = result.manifest
        assert manifest is not None and manifest.gate.passed, manifest.gate.breaches if manifest else None
        assert manifest.gguf == gguf_record(path) and manifest.gguf.quantization == "Q4_0"
        assert "dequantized from a 4-bit file" in manifest.gguf.line
    reference, tokenizer = _transformers(path)
    ids = tokenizer(PROMPT).input_ids
    artifact = Artifact.from_manifest(tmp_path / "build" / "lm" / "onnxruntime-fp32")
    with implementation("onnxruntime").load(artifact, RunOptions(threads=1)) as runner:
        session = session_for(runner, artifact.signature)
        assert list(generate(session, ids, 12)) == _greedy(reference, ids, 12)
        session.close()
    assert (tmp_path / "build" / "lm" / "onnxruntime-fp32" / "tokenizer" / "chat_template.jinja").is_file()


def test_int4_of_a_q4_1_file_writes_back_the_files_own_blocks(tmp_path: Path, cache: Path) -> None:
    """A Q4_1 file's int4 artifacts hold the file's blocks (OpenVINO: u4 with the fp16 scale and
    minimum; ONNX Runtime: MatMulNBits) and reproduce the dequantized reference; weights on no
    grid are refused when the blocks are asked for."""
    from kiln.pipeline.build import build

    tiny_gguf(tmp_path / "tiny.Q4_1.gguf", "Q4_1")
    tiny_gguf(tmp_path / "tiny.F32.gguf", "F32")
    data: dict[str, Any] = {
        "model": {"name": "lm", "source": "gguf:tiny.Q4_1.gguf", "dims": DIMS},
        "generation": {"new_tokens": 8, "heldout_tokens": 64},
        "target": [{"name": "openvino", "precision": "int4"}, {"name": "onnxruntime", "precision": "int4"}],
    }
    ov, ort = build(load_config(write_config(tmp_path, data)), tmp_path / "build")
    for result in (ov, ort):
        manifest = result.manifest
        assert result.status == "built" and manifest is not None, result.error
        quantization = manifest.execution.get("quantization")
        assert quantization["tool"] == "kiln (the source's own blocks)", quantization
        assert quantization["largest_miss_steps"] < 1e-3
        assert manifest.gate.passed, manifest.gate.breaches
    generation = ov.manifest.gate.generation
    assert generation is not None and generation.forced_top1 == 1.0 and abs(generation.perplexity_increase) < 1e-3
    assert ov.manifest.search is None  # the first build passed
    # ONNX Runtime's blocks at accuracy level 4 round the activations to int8 per block: close (this
    # 64-wide random model: top-1 0.958 on an AVX512-VNNI host); where that breaches, the search's
    # first fallback is the same blocks computed in fp32, which reproduce the reference.
    search = ort.manifest.search
    if search is not None:
        assert search.tried[search.chosen].settings == {"accuracy_level": 1}
        assert ort.manifest.gate.generation.forced_top1 == 1.0
    assert ov.manifest.execution.get("quantization")["blocks"] == {"q4_1": 16}
    assert ov.manifest.execution.get("quantization")["weight_constants"] == {"u4": 16}
    assert ort.manifest.execution.get("quantization")["matmul_nbits"] == {"int4": 15}  # 14 layers and the head
    assert ort.manifest.execution.get("quantization")["embeddings"].startswith("the file's blocks: 1 Gather")

    data["model"]["source"] = "gguf:tiny.F32.gguf"
    data["target"] = [
        {"name": "openvino", "precision": "int4", "options": {"blocks": "source"}},
        {"name": "onnxruntime", "precision": "int4", "options": {"blocks": "source"}},
    ]
    for refused in build(load_config(write_config(tmp_path, data)), tmp_path / "build32"):
        assert refused.status == "failed" and "lie on no" in str(refused.error) and "GGUF grid" in str(refused.error)
