"""The Triton / OVMS model repository: every config.pbtxt is parsed with the protobuf message
``tritonclient`` ships (Triton's own schema), never checked as a string."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import ConfigError
from kiln.manifest import Manifest
from kiln.ship.repository import loads, measured, preferred_sizes, refusal, serving, write_model_repository
from kiln.store import sha256_file
from kiln.targets.shipping import Serving
from tests.bench.synthetic import cell, synthetic_results
from tests.conftest import skip_unless, write_config

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient (kiln[ship])")
text_format = pytest.importorskip("google.protobuf.text_format")

DIGITS_SERVED = ("onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32")
FILES = {"onnxruntime": {"model.onnx"}, "openvino": {"model.xml", "model.bin"}}
# The keys OVMS's config schema allows in a model's "config" (src/schema.cpp, additionalProperties false).
OVMS_KEYS = {
    "name",
    "base_path",
    "batch_size",
    "model_version_policy",
    "shape",
    "nireq",
    "target_device",
    "plugin_config",
    "stateful",
    "idle_sequence_cleanup",
    "low_latency_transformation",
    "max_sequence_number",
    "custom_loader_options",
    "layout",
}

PAIR = '''
import torch
from torch import nn


class Pair(nn.Module):
    """Token ids [batch, seq] and features [batch, 4] in; per-token and pooled states out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.mix = nn.Linear(4, 8)

    def forward(self, tokens, features):
        hidden = self.embed(tokens) + self.mix(features)[:, None, :]
        return hidden, hidden.mean(dim=1)


def build():
    torch.manual_seed(0)
    return Pair().eval()
'''


def parse(model_dir: Path) -> Any:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def io(config: Any, kind: str) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in getattr(config, kind)}


def served_files(model_dir: Path) -> set[str]:
    return {p.name for p in (model_dir / "1").iterdir()}


@pytest.fixture(scope="module")
def digits_repo(digits_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    present = [digits_build / key for key in DIGITS_SERVED if (digits_build / key).is_dir()]
    out = tmp_path_factory.mktemp("repo") / "repo"
    assert write_model_repository(present, out) == [out / f"digits-{p.name}" for p in present]
    return out


@pytest.fixture(scope="module")
def pair_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two builds of one two-input module: ``pair`` (a shared dynamic batch, a dynamic sequence)
    for onnxruntime and openvino, and ``solo`` (no batch dim: a static leading 1) for onnxruntime."""
    from kiln.config import load_config
    from kiln.pipeline.build import build

    skip_unless("onnxruntime")
    folder = tmp_path_factory.mktemp("pair")
    (folder / "pair.py").write_text(PAIR)
    targets = [{"name": "onnxruntime"}] + ([{"name": "openvino"}] if _buildable("openvino") else [])
    for name, lead, target in (("pair", "batch", targets), ("solo", 1, [{"name": "onnxruntime"}])):
        dims = {"seq": {"min": 2, "opt": 4, "max": 16}} | ({"batch": {"min": 1, "opt": 2, "max": 8}} if lead else {})
        inputs = [
            {"name": "tokens", "shape": [lead, "seq"], "dtype": "int64", "range": [0, 15]},
            {"name": "features", "shape": [lead, 4]},
        ]
        model = {"name": name, "source": f"{folder / 'pair.py'}:build", "inputs": inputs, "dims": dims}
        path = write_config(folder / name, {"model": model, "target": target})
        results = build(load_config(path), folder / "build")
        assert not [r.target.key for r in results if r.exit_code], [r.error for r in results]
    return folder / "build"


def _buildable(target: str) -> bool:
    from kiln.targets import availability

    return availability(target).build


@pytest.mark.parametrize("key", DIGITS_SERVED)
def test_config_parses_with_tritons_protobuf_for_digits(digits_repo: Path, digits_build: Path, key: str) -> None:
    target = key.split("-")[0]
    skip_unless(target)
    model_dir = digits_repo / f"digits-{key}"
    manifest = Manifest.read(digits_build / key)

    config = parse(model_dir)

    assert config.name == f"digits-{key}"
    assert config.backend == target
    assert config.max_batch_size == 64
    assert io(config, "input") == {"x": ("TYPE_FP32", [1, 8, 8])}
    assert io(config, "output") == {"output": ("TYPE_FP32", [10])}
    sizes = list(config.dynamic_batching.preferred_batch_size)
    assert sizes == ([64] if target == "openvino" else [2, 4, 8, 16, 32, 64])
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)]
    assert config.version_policy.latest.num_versions == 1
    params = {k: v.string_value for k, v in config.parameters.items()}
    threads = str(manifest.execution.threads)
    if target == "onnxruntime":
        assert params == {"intra_op_thread_count": threads, "inter_op_thread_count": "1", "execution_mode": "0"}
    else:
        assert params["INFERENCE_NUM_THREADS"] == threads
        assert params["NUM_STREAMS"] == str(manifest.execution.get("streams"))
        assert params["PERFORMANCE_HINT"] == "LATENCY"
        assert params["ENABLE_BATCH_PADDING"] == "YES"  # the backend runs the IR at max_batch_size
        assert "RESHAPE_IO_LAYERS" not in params  # no dynamic dim but the batch
    assert served_files(model_dir) == FILES[target]
    for name in FILES[target]:  # the bytes that passed the gate
        assert sha256_file(model_dir / "1" / name) == sha256_file(digits_build / key / name)
    assert Manifest.read(model_dir).key == key


def test_ovms_config_lists_every_model_with_its_threads(digits_repo: Path, digits_build: Path) -> None:
    data = json.loads((digits_repo / "config.json").read_text())

    entries = {e["config"]["name"]: e["config"] for e in data["model_config_list"]}

    assert set(data) == {"model_config_list"}
    assert set(entries) == {f"digits-{k}" for k in DIGITS_SERVED if (digits_build / k).is_dir()}
    for name, entry in entries.items():
        assert set(entry) <= OVMS_KEYS
        assert (digits_repo / entry["base_path"] / "1").is_dir()  # base_path relative to config.json
        threads = Manifest.read(digits_repo / name).execution.threads
        assert entry["plugin_config"]["INFERENCE_NUM_THREADS"] == str(threads)
        assert entry["plugin_config"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert "shape" not in entry and "batch_size" not in entry  # the models keep their dynamic ranges


def test_ovms_models_are_readable_by_openvino_as_ovms_loads_them(digits_repo: Path) -> None:
    skip_unless("openvino")
    from kiln.targets import block_imports

    block_imports()
    import openvino as ov

    for entry in json.loads((digits_repo / "config.json").read_text())["model_config_list"]:
        version = digits_repo / entry["config"]["base_path"] / "1"
        main = next(p for p in version.iterdir() if p.suffix in (".onnx", ".xml"))
        model = ov.Core().read_model(str(main))
        assert [p.get_any_name() for p in model.inputs] == ["x"]


def test_two_input_model_batches_on_its_shared_dim(pair_build: Path, tmp_path: Path) -> None:
    folders = sorted((pair_build / "pair").glob("*-fp32"))
    assert folders, "the pair model built nothing"
    outputs = Manifest.read(folders[0]).signature.outputs

    repo = write_model_repository(folders, tmp_path / "repo")

    for model_dir in repo:
        config = parse(model_dir)
        assert config.max_batch_size == 8
        assert io(config, "input") == {"tokens": ("TYPE_INT64", [-1]), "features": ("TYPE_FP32", [4])}
        assert io(config, "output") == {outputs[0]: ("TYPE_FP32", [-1, 8]), outputs[1]: ("TYPE_FP32", [8])}
        assert list(config.dynamic_batching.preferred_batch_size)[-1] == 8
        params = {k: v.string_value for k, v in config.parameters.items()}
        if config.backend == "openvino":  # -1 against the IR's bounded 2..16 would be a mismatch
            assert params["RESHAPE_IO_LAYERS"] == "YES"


def test_model_without_a_batch_dim_gets_max_batch_size_0_and_full_dims(pair_build: Path, tmp_path: Path) -> None:
    (model_dir,) = write_model_repository([pair_build / "solo" / "onnxruntime-fp32"], tmp_path / "repo")

    config = parse(model_dir)

    assert config.max_batch_size == 0
    assert io(config, "input") == {"tokens": ("TYPE_INT64", [1, -1]), "features": ("TYPE_FP32", [1, 4])}
    assert [dims for _, dims in io(config, "output").values()] == [[1, -1, 8], [1, 8]]
    assert not config.HasField("dynamic_batching")  # Triton refuses preferred sizes above a max of 0


def test_thread_settings_and_batch_sizes_come_from_the_benchmark(digits_build: Path, tmp_path: Path) -> None:
    from kiln.config import BenchSettings

    model = tmp_path / "digits"
    shutil.copytree(digits_build / "onnxruntime-fp32", model / "onnxruntime-fp32")
    settings = BenchSettings(batches=[1, 8, 32], threads=1).resolve(physical_cores=2)
    cells = [cell("onnxruntime-fp32", b, 1.0, threads=1) for b in (1, 8, 32)]
    results = synthetic_results(model="digits", settings=settings, cells=cells)
    (model / "results.json").write_text(json.dumps(results.to_json()))

    (model_dir,) = write_model_repository([model / "onnxruntime-fp32"], tmp_path / "repo")

    config = parse(model_dir)
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32, 64]
    assert "results.json" in (model_dir / "config.pbtxt").read_text().splitlines()[1]
    assert measured(model / "onnxruntime-fp32", Manifest.read(model_dir)).threads == 1


def test_preferred_sizes_stay_within_the_max() -> None:
    ort, trt, ov = (serving(name) for name in ("onnxruntime", "tensorrt", "openvino"))
    assert isinstance(ort, Serving) and isinstance(trt, Serving) and isinstance(ov, Serving)
    assert preferred_sizes(ort, 6, ()) == [2, 4, 6]
    assert preferred_sizes(ort, 16, (1, 32)) == [2, 4, 8, 16]
    assert preferred_sizes(trt, 16, (1, 4, 32)) == [4, 16]
    assert preferred_sizes(ov, 16, (4,)) == [16]  # the backend pads every batch to the max


def test_the_servers_loads_are_the_registry_s_in_words() -> None:
    assert loads() == (
        "Triton loads ONNX (onnxruntime), OpenVINO IR (openvino) and TensorRT plans (tensorrt); "
        "OVMS loads ONNX and OpenVINO IR"
    )


def _fake(digits_build: Path, folder: Path, **update: Any) -> Path:
    """An artifact folder whose manifest says what ``update`` says (refusal reads only that)."""
    manifest = Manifest.read(digits_build / "eager-fp32").model_copy(update=update)
    folder.mkdir(parents=True)
    manifest.write(folder)
    return folder


@pytest.mark.parametrize(
    ("target", "main_file", "words"),
    [
        ("eager", "program.pt2", "eager runner"),
        ("aoti", "model.pt2", "AOTInductor"),
        ("coreml", "model.mlpackage", "Apple devices"),
        ("executorch", "model.pte", "ExecuTorch"),
    ],
)
def test_artifacts_no_server_loads_are_refused_with_the_reason(
    digits_build: Path, tmp_path: Path, target: str, main_file: str, words: str
) -> None:
    fake = _fake(digits_build, tmp_path / "build" / f"{target}-fp32", target=target, main_file=main_file)
    out = tmp_path / "repo"

    with pytest.raises(ConfigError) as err:
        write_model_repository([digits_build / "onnxruntime-fp32", fake], out)

    assert err.value.exit_code == 2
    assert words in str(err.value) and "Triton loads ONNX" in str(err.value)
    assert not out.exists()  # refused before anything is written
    assert refusal(Manifest.read(digits_build / "onnxruntime-fp32")) is None


def test_stateful_openvino_ir_is_refused(digits_build: Path, tmp_path: Path) -> None:
    manifest = Manifest.read(digits_build / "eager-fp32")
    execution = manifest.execution.model_copy(update={"stateful": True})
    fake = _fake(
        digits_build, tmp_path / "openvino-fp32", target="openvino", main_file="model.xml", execution=execution
    )

    with pytest.raises(ConfigError, match="stateful OpenVINO IR"):
        write_model_repository([fake], tmp_path / "repo")


def test_rerun_replaces_models_whole_and_keeps_other_entries(digits_build: Path, tmp_path: Path) -> None:
    skip_unless("onnxruntime")
    out = tmp_path / "repo"
    out.mkdir()
    foreign = {"config": {"name": "resnet", "base_path": "/models/resnet"}}
    (out / "config.json").write_text(json.dumps({"model_config_list": [foreign], "pipeline_config_list": []}))
    (model_dir,) = write_model_repository([digits_build / "onnxruntime-fp32"], out)
    (model_dir / "1" / "stale.onnx").write_bytes(b"left from an older layout")

    assert write_model_repository([digits_build / "onnxruntime-fp32"], out) == [model_dir]

    assert served_files(model_dir) == {"model.onnx"}
    data = json.loads((out / "config.json").read_text())
    assert data["pipeline_config_list"] == []
    assert [e["config"]["name"] for e in data["model_config_list"]] == ["resnet", "digits-onnxruntime-fp32"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_failure_leaves_the_repository_as_it_was(digits_build: Path, tmp_path: Path) -> None:
    skip_unless("onnxruntime")
    out = tmp_path / "repo"
    (before,) = write_model_repository([digits_build / "onnxruntime-fp32"], out)
    config_before = (before / "config.pbtxt").read_text()
    tampered = tmp_path / "build" / "digits" / "onnxruntime-int8"
    shutil.copytree(digits_build / "onnxruntime-int8", tampered)
    with (tampered / "model.onnx").open("ab") as f:
        f.write(b"\0")

    with pytest.raises(ConfigError, match="differs from what its manifest records"):
        write_model_repository([digits_build / "onnxruntime-fp32", tampered], out)

    assert sorted(p.name for p in out.iterdir()) == ["config.json", "digits-onnxruntime-fp32"]
    assert (before / "config.pbtxt").read_text() == config_before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_tensorrt_engine_is_a_gpu_plan_described_by_its_onnx(digits_build: Path, tmp_path: Path) -> None:
    """No TensorRT here: a folder laid out as kiln's tensorrt target writes it (engine bytes are
    opaque to the repository; the I/O comes from the ONNX the engine was built from)."""
    from kiln.manifest import FileEntry

    folder = tmp_path / "digits" / "tensorrt-fp16"
    folder.mkdir(parents=True)
    (folder / "model.engine").write_bytes(b"serialized engine")
    (folder / "plan.json").write_text(json.dumps({"onnx": str(digits_build / "export" / "model.onnx")}))
    entry = FileEntry(path="model.engine", sha256=sha256_file(folder / "model.engine"), bytes=17)
    base = Manifest.read(digits_build / "onnxruntime-fp32")
    base.model_copy(
        update={"target": "tensorrt", "precision": "fp16", "main_file": "model.engine", "files": [entry]}
    ).write(folder)

    (model_dir,) = write_model_repository([folder], tmp_path / "repo")

    config = parse(model_dir)
    assert (config.backend, config.platform, config.default_model_filename) == (
        "tensorrt",
        "tensorrt_plan",
        "model.plan",
    )
    assert config.max_batch_size == 64
    assert io(config, "output") == {"output": ("TYPE_FP32", [10])}
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert served_files(model_dir) == {"model.plan"}
    assert json.loads((tmp_path / "repo" / "config.json").read_text())["model_config_list"] == []  # OVMS: no plans


@pytest.mark.parametrize(("passed", "words"), [(False, "failed its gate"), (None, "--allow-ungated")])
def test_artifact_without_a_passed_gate_is_refused(
    digits_build: Path, tmp_path: Path, passed: bool | None, words: str
) -> None:
    from kiln.manifest import Gate

    folder = tmp_path / "digits" / "onnxruntime-fp32"
    shutil.copytree(digits_build / "onnxruntime-fp32", folder)
    gate = Gate(passed=passed, reason=None if passed is False else "not run: no CPU", breaches=["cosine 0.9"])
    Manifest.read(folder).model_copy(update={"gate": gate}).write(folder)

    with pytest.raises(ConfigError, match=words):
        write_model_repository([folder], tmp_path / "repo")
    if passed is None:  # ungated on request: the repository is written
        assert write_model_repository([folder], tmp_path / "repo", allow_ungated=True) == [
            tmp_path / "repo" / "digits-onnxruntime-fp32"
        ]
