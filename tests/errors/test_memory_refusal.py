"""A build that cannot fit in this machine's memory is refused before any work (exit 8), with the
estimate, the machine's memory and what to do; a small model passes the check.

The huge model is a fake ``hf:`` folder: a 7 B Llama's config.json and safetensors files that
hold only their headers (the tensors they declare are never written). The machine is made a
24 GiB one by replacing what ``/proc/meminfo`` says, so the verdicts hold on any machine.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from kiln.cli import main
from kiln.config import ModelConfig
from kiln.errors import ResourceError
from kiln.pipeline import memory
from tests.conftest import CNN, write_config

GIB = 2**30
LLAMA_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "torch_dtype": "bfloat16",
}
HUGE_DIMS = {"batch": {"min": 1, "max": 1}, "sequence": {"min": 1, "max": 16}, "past": {"min": 0, "max": 16}}


def _llama_tensors(config: dict) -> dict[str, list[int]]:
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes = {"model.embed_tokens.weight": [vocab, h], "model.norm.weight": [h], "lm_head.weight": [vocab, h]}
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{layer}.self_attn.{name}.weight"] = [h, h]
        shapes[f"{layer}.mlp.gate_proj.weight"] = [inter, h]
        shapes[f"{layer}.mlp.up_proj.weight"] = [inter, h]
        shapes[f"{layer}.mlp.down_proj.weight"] = [h, inter]
        shapes[f"{layer}.input_layernorm.weight"] = [h]
        shapes[f"{layer}.post_attention_layernorm.weight"] = [h]
    return shapes


def _header_only(path: Path, shapes: dict[str, list[int]], dtype: str = "BF16", itemsize: int = 2) -> None:
    """A safetensors file's header declaring ``shapes``, without the data it describes."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = itemsize
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def huge_hf_folder(folder: Path) -> Path:
    """A 7 B Llama in name only: config.json, two header-only shards and their index."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(LLAMA_7B))
    shapes = _llama_tensors(LLAMA_7B)
    names = list(shapes)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2]}
    shards["model-00002-of-00002.safetensors"] = names[len(names) // 2 :]
    for shard, members in shards.items():
        _header_only(folder / shard, {n: shapes[n] for n in members})
    index = {"metadata": {}, "weight_map": {n: shard for shard, members in shards.items() for n in members}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture
def machine_24gib(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine, as the memory check sees it: 24 GiB, 22 GiB of it available, no cgroup limit."""
    monkeypatch.setattr(memory, "_meminfo", lambda: {"MemTotal": 24 * GIB, "MemAvailable": 22 * GIB})
    monkeypatch.setattr(memory, "_cgroup_room", lambda: None)
    monkeypatch.setattr(memory, "_rss_bytes", lambda: 0)  # a fresh build's, not this test process's


def _huge_config(tmp_path: Path) -> Path:
    huge_hf_folder(tmp_path / "llama7b")
    model = {"name": "llama7b", "source": "hf:llama7b", "task": "text-generation", "dims": HUGE_DIMS}
    return write_config(tmp_path, {"model": model, "target": [{"name": "onnxruntime", "precision": "int4"}]})


def test_huge_hf_folder_is_counted_from_its_headers(tmp_path: Path) -> None:
    folder = huge_hf_folder(tmp_path / "llama7b")
    weights = memory.weights_of_source(ModelConfig(name="m", source=f"hf:{folder}"), tmp_path)
    assert weights is not None and weights.counted == "safetensors headers"
    assert weights.parameters == 6_738_415_616  # Llama-2-7B's count
    assert weights.bytes == 2 * weights.parameters  # bf16


def test_huge_model_exits_8_before_any_work_naming_estimate_and_memory(tmp_path: Path, machine_24gib: None) -> None:
    path = _huge_config(tmp_path)
    result = CliRunner().invoke(main, ["build", str(path), "--out", str(tmp_path / "b")])
    assert result.exit_code == 8, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("kiln: error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    line = errors[0]
    assert "llama7b: this build needs about 22.6 GiB of memory (6.74 B parameters, 12.6 GiB of weights" in line
    assert "x1.7 for export and the targets" in line
    assert "but 22.0 GiB of this machine's 24.0 GiB is available" in line
    assert "a machine with at least 23 GiB free" in line and "--skip-memory-check" in line
    # Refused before loading: no stage started, nothing exported.
    assert "load: started" not in result.output
    assert not (tmp_path / "b" / "llama7b" / "export").exists()


def test_huge_model_raises_from_the_api_without_progress(tmp_path: Path, machine_24gib: None) -> None:
    import kiln

    told: list[str] = []
    with pytest.raises(ResourceError):
        kiln.build(_huge_config(tmp_path), tmp_path / "b", progress=told.append)
    assert told == []


@pytest.mark.parametrize("how", [["--skip-memory-check"], ["env"]])
def test_skip_memory_check_goes_past_the_refusal(
    tmp_path: Path, machine_24gib: None, monkeypatch: pytest.MonkeyPatch, how: list[str]
) -> None:
    path = _huge_config(tmp_path)
    if how == ["env"]:
        monkeypatch.setenv("KILN_SKIP_MEMORY_CHECK", "1")
        how = []
    result = CliRunner().invoke(main, ["build", str(path), "--out", str(tmp_path / "b"), *how])
    # Not refused for its size: loading starts, and fails on the folder (it has no tokenizer, no weights).
    assert result.exit_code == 2, result.output
    assert "load: started" in result.output and "this build needs about" not in result.output


def test_factory_model_too_large_is_refused_after_loading_before_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "_meminfo", lambda: {"MemTotal": GIB, "MemAvailable": 0})
    monkeypatch.setattr(memory, "_cgroup_room", lambda: None)
    monkeypatch.setattr(memory, "BASELINE_BYTES", 64 * GIB)  # no process holds that much already
    path = write_config(tmp_path, {**CNN, "target": [{"name": "onnxruntime"}]})
    result = CliRunner().invoke(main, ["build", str(path), "--out", str(tmp_path / "b")])
    assert result.exit_code == 8, result.output
    assert "weights from the loaded model" in result.output
    assert "cnn: load: done" in result.output and "export: started" not in result.output
    assert not (tmp_path / "b" / "cnn" / "export").exists()


def test_tiny_hf_folder_is_counted_as_it_loads_and_passes(tmp_path: Path) -> None:
    from tests.generative.models import tiny_llama_folder

    folder = tiny_llama_folder(tmp_path / "tiny")
    counted = memory.weights_of_source(ModelConfig(name="m", source=f"hf:{folder}"), tmp_path)
    from transformers import AutoModelForCausalLM

    loaded = memory.weights_of_module(AutoModelForCausalLM.from_pretrained(folder))
    assert counted is not None and counted.bytes > 0
    # Tied or not, the file and the model hold the same distinct tensors' bytes (within the
    # model's non-persistent buffers: rotary frequencies).
    assert counted.bytes <= loaded.bytes <= counted.bytes * 1.01
    memory.check_fits("tiny", counted)  # this machine can build it


def test_gguf_is_counted_from_its_header_as_fp32(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    from tests.sources.test_gguf import tiny_gguf

    f32 = memory.weights_of_source(ModelConfig(name="m", source=str(tiny_gguf(tmp_path / "a.gguf"))), tmp_path)
    q4 = memory.weights_of_source(ModelConfig(name="m", source=str(tiny_gguf(tmp_path / "b.gguf", "Q4_0"))), tmp_path)
    assert f32 is not None and q4 is not None
    assert f32.parameters == q4.parameters and f32.bytes == q4.bytes == 4 * f32.parameters
    # The header read here, tensor by tensor, is what the gguf package's own reader finds.
    reader = gguf.GGUFReader(tmp_path / "b.gguf")
    assert memory.gguf_shapes(tmp_path / "b.gguf") == [tuple(int(d) for d in t.shape) for t in reader.tensors]
    assert f32.parameters == sum(int(t.n_elements) for t in reader.tensors)


def test_a_file_that_is_not_gguf_is_left_to_its_loader(tmp_path: Path) -> None:
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf file at all, only text" * 4)
    assert memory.weights_of_source(ModelConfig(name="m", source=str(tmp_path / "fake.gguf")), tmp_path) is None


def test_cgroup_limit_below_meminfo_is_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = tmp_path / "group"
    group.mkdir()
    (group / "memory.max").write_text(f"{4 * GIB}\n")
    (group / "memory.current").write_text(f"{3 * GIB}\n")
    (group / "memory.stat").write_text(f"anon 1\ninactive_file {GIB // 2}\n")
    monkeypatch.setattr(memory, "_cgroup_folders", lambda: [(group, ("memory.max", "memory.current"))])
    monkeypatch.setattr(memory, "_meminfo", lambda: {"MemTotal": 64 * GIB, "MemAvailable": 60 * GIB})
    assert memory.available_bytes() == (GIB + GIB // 2, 4 * GIB)


def test_unlimited_cgroup_leaves_meminfo_as_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text(f"{3 * GIB}\n")
    monkeypatch.setattr(memory, "_cgroup_folders", lambda: [(tmp_path, ("memory.max", "memory.current"))])
    monkeypatch.setattr(memory, "_meminfo", lambda: {"MemTotal": 8 * GIB, "MemAvailable": 6 * GIB})
    assert memory.available_bytes() == (6 * GIB, 8 * GIB)


def test_kiln_export_refuses_the_huge_model_too(tmp_path: Path, machine_24gib: None) -> None:
    folder = huge_hf_folder(tmp_path / "llama7b")
    args = ["export", f"hf:{folder}", "--input", "input_ids:batch,sequence:int64", "-o", str(tmp_path / "b" / "m")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 8 and "this build needs about 22.6 GiB" in result.output, result.output
    assert not (tmp_path / "b" / "m" / "export").exists()
