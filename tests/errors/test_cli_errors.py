"""Bad input, tried from the command line as a user would: every case must exit with its
documented code, write exactly one line to stderr (no traceback, no toolchain log lines), and
leave nothing that looks complete (no manifest.json, no export.json) behind.

Each case is (id, files to write, arguments, exit code). ``{tmp}`` in files and arguments is the
case's folder; ``{cnn}`` is the tiny CNN factory the other tests use.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MODELS, interruptible

KILN = [sys.executable, "-m", "kiln.cli"]

CNN_MODEL = f"""
[model]
name = "cnn"
source = "{MODELS}:tiny_cnn"
inputs = [{{ name = "x", shape = ["batch", 3, 16, 16] }}]
dims = {{ batch = {{ min = 1, opt = 2, max = 8 }} }}
"""
ORT = '\n[[target]]\nname = "onnxruntime"\n'


def cnn(extra: str = "", target: str = ORT) -> dict[str, str]:
    return {"kiln.toml": CNN_MODEL + extra + target}


def model(source: str, extra: str = "", target: str = ORT, inputs: str | None = None) -> dict[str, str]:
    spec = inputs or 'inputs = [{ name = "x", shape = ["batch", 4] }]\ndims = { batch = { min = 1, max = 4 } }'
    return {"kiln.toml": f'[model]\nname = "m"\nsource = "{source}"\n{spec}\n{extra}{target}'}


def gguf(source: str) -> dict[str, str]:
    return {"kiln.toml": f'[model]\nname = "m"\nsource = "{source}"\n' + ORT}


def gguf_header(architecture: str) -> bytes:
    """A GGUF file (version 3) with no tensors and one key: general.architecture."""
    key, arch = b"general.architecture", architecture.encode()
    return b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, len(key)) + key + struct.pack("<IQ", 8, len(arch)) + arch


FACTORIES = {
    "raises.py": "def build():\n    raise RuntimeError('weights not found')\n",
    "notmodule.py": "def build():\n    return 42\n",
    "syntax.py": "def build(:\n",
    "kwonly.py": textwrap.dedent(
        """
        import torch
        class M(torch.nn.Module):
            def forward(self, x, *, scale):
                return x * scale
        def build():
            return M()
        """
    ),
    "pinned.py": textwrap.dedent(
        """
        import torch
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(4, 4)
            def forward(self, x):
                return self.lin(x.reshape(2, 4))
        def build():
            return M()
        """
    ),
    "branches.py": textwrap.dedent(
        """
        import torch
        class M(torch.nn.Module):
            def forward(self, x):
                if x.sum() > 0:
                    return x * 2
                return x - 1
        def build():
            return M()
        """
    ),
    "narrow.py": textwrap.dedent(
        """
        import torch
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(3, 4)
            def forward(self, x):
                return self.lin(x)
        def build():
            return M()
        def with_example():
            return M(), (torch.randn(8, 3),)
        """
    ),
}

CASES = [
    # --- the config file itself
    ("config-missing", {}, ["build", "{tmp}/nope.toml"], 2),
    ("config-not-toml", {"kiln.toml": "[model\nname = 1"}, ["build", "{tmp}/kiln.toml"], 2),
    ("unknown-top-level-key", cnn("\n[modle]\nx = 1\n"), ["build", "{tmp}/kiln.toml"], 2),
    ("unknown-model-key", {"kiln.toml": CNN_MODEL.replace("[model]", "[model]\nsorce = 'x'") + ORT}, None, 2),
    ("bad-model-name", {"kiln.toml": CNN_MODEL.replace('name = "cnn"', 'name = "a b/c"') + ORT}, None, 2),
    ("dim-min-over-max", {"kiln.toml": CNN_MODEL.replace("max = 8", "max = 0") + ORT}, None, 2),
    ("dim-undeclared", {"kiln.toml": CNN_MODEL.replace('"batch", 3', '"batch", "c"') + ORT}, None, 2),
    (
        "duplicate-input-names",
        model("m.py:f", inputs='inputs = [{ name = "x", shape = [4] }, { name = "x", shape = [4] }]'),
        None,
        2,
    ),
    ("unknown-dtype", model("m.py:f", inputs='inputs = [{ name = "x", shape = [4], dtype = "f32" }]'), None, 2),
    ("zero-size", model("m.py:f", inputs='inputs = [{ name = "x", shape = [0] }]'), None, 2),
    (
        "empty-dim-not-past",
        model("m.py:f", inputs='inputs = [{ name = "x", shape = ["b"] }]\ndims = { b = { min = 0, max = 2 } }'),
        None,
        2,
    ),
    ("unknown-target", cnn(target='\n[[target]]\nname = "onnxruntme"\n'), None, 2),
    ("unknown-precision", cnn(target='\n[[target]]\nname = "onnxruntime"\nprecision = "int3"\n'), None, 2),
    (
        "unknown-option",
        cnn(target='\n[[target]]\nname = "onnxruntime"\noptions = { graph_optimisation = 1 }\n'),
        None,
        2,
    ),
    ("option-wrong-type", cnn(target='\n[[target]]\nname = "openvino"\noptions = { num_streams = "yes" }\n'), None, 2),
    ("calibration-needed", cnn(target='\n[[target]]\nname = "onnxruntime"\nprecision = "int8"\n'), None, 2),
    ("duplicate-target-rows", cnn(target=ORT + ORT), None, 2),
    (
        "conflicting-target-rows",
        cnn(target=ORT + '\n[[target]]\nname = "onnxruntime"\noptions = { intra_op_threads = 1 }\n'),
        None,
        2,
    ),
    ("tolerance-unknown-key", cnn(target='\n[[target]]\nname = "onnxruntime"\ntolerance = { cos = 1 }\n'), None, 2),
    (
        "prune-amount-out-of-range",
        cnn(target='\n[[target]]\nname = "onnxruntime"\nprune = { method = "channel", amount = 1.5 }\n'),
        None,
        2,
    ),
    ("unknown-metric", cnn('\n[evaluation]\nsource = "e.py:f"\nmetric = "f1"\n'), None, 2),
    ("generation-zero-tokens", cnn("\n[generation]\nnew_tokens = 0\n"), None, 2),
    ("bench-batch-zero", cnn("\n[bench]\nbatch = [0]\n"), None, 2),
    ("no-targets", cnn(target=""), None, 2),
    ("unknown-cli-target", cnn(), ["build", "{tmp}/kiln.toml", "--target", "tensor-rt"], 2),
    # --- the model source
    ("source-form", model("model.weights"), None, 2),
    ("factory-file-missing", model("missing.py:build"), None, 2),
    ("factory-attribute-missing", {**model("raises.py:nope"), **FACTORIES}, None, 2),
    ("factory-raises", {**model("raises.py:build"), **FACTORIES}, None, 2),
    ("factory-not-a-module", {**model("notmodule.py:build"), **FACTORIES}, None, 2),
    ("factory-syntax-error", {**model("syntax.py:build"), **FACTORIES}, None, 2),
    ("forward-needs-a-parameter", {**model("kwonly.py:build"), **FACTORIES}, None, 2),
    ("pt2-missing", model("model.pt2"), None, 2),
    ("pt2-corrupt", {**model("model.pt2"), "model.pt2": "PK\x03\x04 not a zip"}, None, 2),
    ("onnx-missing", {"kiln.toml": '[model]\nname = "m"\nsource = "m.onnx"\n' + ORT}, None, 2),
    ("onnx-corrupt", {"kiln.toml": '[model]\nname = "m"\nsource = "m.onnx"\n' + ORT, "m.onnx": "garbage"}, None, 2),
    ("hf-folder-without-config", {"kiln.toml": '[model]\nname = "m"\nsource = "hf:nothing"\n' + ORT}, None, 2),
    ("gguf-missing", gguf("gguf:nowhere.gguf"), None, 2),
    ("gguf-not-a-gguf-file", {**gguf("m.gguf"), "m.gguf": "not a GGUF file"}, None, 2),
    ("gguf-package-not-installed", gguf("gguf:pkg://no_such_package/m.gguf"), None, 2),
    ("gguf-architecture-transformers-cannot-load", {**gguf("m.gguf"), "m.gguf": gguf_header("rwkv6")}, None, 2),
    (
        "program-target-on-onnx-source",
        {"kiln.toml": '[model]\nname = "m"\nsource = "m.onnx"\n[[target]]\nname = "aoti"\n', "m.onnx": "x"},
        None,
        2,
    ),
    ("adapter-missing", {"kiln.toml": CNN_MODEL.replace("[model]", '[model]\nadapter = "nowhere"') + ORT}, None, 2),
    # --- data
    ("calibration-missing", cnn('\n[calibration]\nsource = "none.npz"\n'), None, 2),
    (
        "calibration-shape",
        {**cnn('\n[calibration]\nsource = "cal.npz"\n'), "cal.npz": ("x", (4, 3, 8, 8), "f4")},
        None,
        2,
    ),
    (
        "calibration-dtype",
        {**cnn('\n[calibration]\nsource = "cal.npz"\n'), "cal.npz": ("x", (4, 3, 16, 16), "i4")},
        None,
        2,
    ),
    # --- out folders
    ("out-is-a-file", {**cnn(), "out": "a file"}, ["build", "{tmp}/kiln.toml", "--out", "{tmp}/out"], 2),
    ("out-under-a-file", {**cnn(), "out": "a file"}, ["build", "{tmp}/kiln.toml", "--out", "{tmp}/out/sub"], 2),
    # --- other commands
    ("generate-not-built", {}, ["generate", "{tmp}", "--prompt", "hi"], 2),
    ("bench-nothing-built", {"build/cnn/.keep": ""}, ["bench", "{tmp}/build/cnn"], 2),
    ("bench-steal-out-of-range", cnn(), ["bench", "{tmp}/kiln.toml", "--max-round-steal", "1.5"], 2),
    ("unknown-command", {}, ["biuld", "{tmp}/kiln.toml"], 2),
    ("missing-argument", {}, ["fleet"], 2),
    ("compare-missing", {}, ["compare", "{tmp}/a.json", "{tmp}/b.json"], 2),
    ("report-not-results", {"r.json": "{}"}, ["report", "{tmp}/r.json"], 2),
    ("export-bad-input-flag", {}, ["export", f"{MODELS}:tiny_cnn", "--input", "x:batch,3", "--dim", "batch=1"], 2),
    # --- the model cannot be captured by torch.export: its own code, documented, not a kiln bug
    (
        "capture-pins-a-dim",
        {**model("pinned.py:build"), **FACTORIES},
        None,
        6,
    ),
    # torch.export printed its partial graph (twice) before the line; the line names branches.py:5
    ("capture-data-dependent-branch", {**model("branches.py:build"), **FACTORIES}, None, 6),
    # the spec's [batch, 4] against a model that takes [batch, 3]: a RuntimeError traceback, exit 1
    ("capture-spec-does-not-fit-the-model", {**model("narrow.py:build"), **FACTORIES}, None, 2),
    # the source's example at batch 8 outside dims 1..4: "ConstraintViolationError: 8 not in range"
    (
        "capture-example-outside-the-dims",
        {
            **model(
                "narrow.py:with_example",
                inputs='inputs = [{ name = "x", shape = ["batch", 3] }]\ndims = { batch = { min = 1, max = 4 } }',
            ),
            **FACTORIES,
        },
        None,
        2,
    ),
]


def _write(folder: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):  # an .npz: (input name, shape, dtype)
            key, shape, dtype = content
            np.savez(path, **{key: np.ones(shape, dtype=dtype)})
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(str(content).replace("{tmp}", str(folder)))


def run_kiln(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": ""}
    return subprocess.run([*KILN, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def assert_one_line(proc: subprocess.CompletedProcess[str], code: int) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr[-2000:]}"
    assert lines[0].startswith("kiln: error: "), lines[0]


def assert_nothing_complete(folder: Path) -> None:
    for name in ("manifest.json", "export.json", "results.json"):
        assert not [p for p in folder.rglob(name) if ".venv" not in p.parts], f"a {name} was left behind"


# The cases that run the user's model code (a factory, a program, calibration through capture) take
# seconds each in their own process: the full suite's, not the inner loop's.
CAPTURING = ("factory-", "forward-", "pt2-", "calibration-shape", "calibration-dtype", "capture-", "gguf-arch")


@pytest.mark.parametrize(
    ("files", "args", "code"),
    [pytest.param(f, a, c, id=i, marks=[pytest.mark.slow] if i.startswith(CAPTURING) else []) for i, f, a, c in CASES],
)
def test_bad_input_is_one_line_and_its_exit_code(tmp_path: Path, files: dict, args: list | None, code: int) -> None:
    _write(tmp_path, files)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in (args or ["build", "{tmp}/kiln.toml"])]
    if "--out" not in argv and argv[0] == "build":
        argv += ["--out", str(tmp_path / "build")]
    proc = run_kiln(argv, tmp_path)
    assert_one_line(proc, code)
    assert_nothing_complete(tmp_path)


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


def test_a_full_disk_is_one_line_and_leaves_nothing_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while writing the export stage, simulated by patching the write path."""
    import errno

    from click.testing import CliRunner

    import kiln.capture.exporters as exporters
    from kiln.cli import main

    _write(tmp_path, cnn())

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "build" / "cnn" / "export"))

    monkeypatch.setattr(exporters, "export_model", full)
    result = CliRunner().invoke(main, ["build", str(tmp_path / "kiln.toml"), "--out", str(tmp_path / "build")])
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.output and "free some disk space" in result.output
    assert "Traceback" not in result.output
    assert_nothing_complete(tmp_path)
    assert not list((tmp_path / "build" / "cnn").glob(".tmp-*"))


@pytest.mark.slow
def test_ctrl_c_exits_130_keeps_nothing_half_written_and_the_next_build_succeeds(tmp_path: Path) -> None:
    _write(tmp_path, cnn(target=ORT + '\n[[target]]\nname = "aoti"\n'))
    out = tmp_path / "build"
    proc = subprocess.Popen(
        [*KILN, "build", str(tmp_path / "kiln.toml"), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((out / "cnn").glob(".tmp-aoti-fp32-*")):
        assert proc.poll() is None, "the build ended before the interrupt"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    said = [line for line in stderr.splitlines() if not line.startswith("kiln: cnn: ")]  # stage lines aside
    assert len(said) == 1 and "interrupted" in said[0] and "Traceback" not in stderr
    assert not (out / "cnn" / "aoti-fp32").exists()
    again = run_kiln(["build", str(tmp_path / "kiln.toml"), "--out", str(out)], tmp_path)
    assert again.returncode == 0, again.stderr  # the lock was released; the debris is cleaned
    assert (out / "cnn" / "aoti-fp32" / "manifest.json").is_file()


_WRAPPING = """
import os, signal
import click
from kiln.cli.base import command
from kiln.errors import TargetBuildError

@click.command()
@click.argument("how")
@command
def main(how):
    if how == "chained":
        # The interrupt stays in the chain: KeyboardInterrupt -> RuntimeError -> TargetBuildError.
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as err:
            wrapped = RuntimeError("Error calling __set_name__ on 'Field' instance")
            wrapped.__cause__ = err
            raise TargetBuildError("compile failed") from wrapped
    # The chain is lost: a real SIGINT is swallowed, and the toolchain fails later with its own error.
    failed = False
    try:
        os.kill(os.getpid(), signal.SIGINT)  # Python's handler raises KeyboardInterrupt here
    except KeyboardInterrupt:
        failed = True
    if failed:
        raise TargetBuildError("compile failed")
    raise SystemExit("the signal never arrived")

main()
"""


@pytest.mark.parametrize("how", ["chained", "unchained"])
def test_an_interrupt_a_toolchain_wrapped_in_its_own_error_still_exits_130(how: str, tmp_path: Path) -> None:
    script = tmp_path / "wrapping.py"
    script.write_text(_WRAPPING)
    proc = subprocess.run(
        [sys.executable, str(script), how], capture_output=True, text=True, timeout=120, preexec_fn=interruptible
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "interrupted" in proc.stderr
