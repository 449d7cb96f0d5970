"""The Python API: docs/python-api.md's example runs as written, ``import kiln`` stays instant,
the CLI's build/bench/generate/package/verify go through the API and only format its results,
and the option groups hand the API exactly the flags given."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "python-api.md"
MARK = "<!-- tests/test_api.py runs the next block"
API_COMMANDS = ("build", "bench", "generate", "package", "verify")
# What those commands may import besides the API: errors, and the formatting of its results.
FORMATTING = {"kiln.api", "kiln.errors", "kiln.report.console", "kiln.pipeline.summary", "kiln.pipeline.progress"}


def _tested_blocks() -> list[str]:
    """The page's code blocks marked as run by this test, in order."""
    text = DOC.read_text()
    blocks = [re.search(r"```python\n(.*?)```", part, re.S) for part in text.split(MARK)[1:]]
    assert blocks, f"{DOC} lost the blocks tests/test_api.py runs"
    return [block.group(1) for block in blocks if block is not None]


@pytest.mark.slow
@pytest.mark.target("onnxruntime", stage="run")
def test_the_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the measured peak: not ~/.cache
    namespace = {"__name__": "docs_example"}
    for block in _tested_blocks():
        exec(compile(block, str(DOC), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "onnxruntime-fp32 built True" in printed
    assert "(4, 4)" in printed
    assert (tmp_path / "build" / "tiny" / "results.json").is_file()
    assert [p.name for p in (tmp_path / "dist").glob("*.tar.gz")] == ["tiny-onnxruntime-fp32.tar.gz"]


def test_kiln_exports_the_api_lazily() -> None:
    code = (
        "import sys, kiln; before = 'kiln.api' in sys.modules; build = kiln.build;"
        "import kiln.api; print(before, build is kiln.api.build, sorted(kiln.api.__all__) == sorted(kiln._API))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "True", "True"]
    import kiln
    import kiln.api

    # A subpackage of the same name (kiln.bench) would shadow an API name once imported.
    assert not {p.stem for p in (ROOT / "kiln").iterdir()} & set(kiln._API)
    assert all(getattr(kiln, name) is getattr(kiln.api, name) for name in kiln._API)
    with pytest.raises(AttributeError, match="no attribute 'biuld'"):
        kiln.biuld  # noqa: B018


def _kiln_imports(node: ast.AST) -> set[str]:
    found = set()
    for inner in ast.walk(node):
        if isinstance(inner, ast.ImportFrom) and inner.module and inner.module.startswith("kiln"):
            found.add(inner.module)
        elif isinstance(inner, ast.Import):
            found.update(a.name for a in inner.names if a.name.startswith("kiln"))
    return found


def _commands() -> dict[str, tuple[ast.FunctionDef, set[str]]]:
    """Each API command's function in kiln/cli, and what it and the collectors of its option
    groups import from kiln."""
    found: dict[str, tuple[ast.FunctionDef, set[str]]] = {}
    for path in sorted((ROOT / "kiln" / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        groups = {
            target.id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for name in API_COMMANDS:
            fn = functions.get(name)
            if fn is None:
                continue
            imports = _kiln_imports(fn)
            for decorator in fn.decorator_list:
                call = groups.get(decorator.id) if isinstance(decorator, ast.Name) else None
                if call is not None and len(call.args) == 3 and isinstance(call.args[2], ast.Name):
                    imports |= _kiln_imports(functions[call.args[2].id])
            found[name] = (fn, imports)
    return found


def test_the_cli_commands_call_nothing_but_the_api() -> None:
    commands = _commands()
    assert sorted(commands) == sorted(API_COMMANDS)
    for name, (fn, imports) in commands.items():
        assert "kiln.api" in imports, f"kiln {name} does not call kiln.api"
        assert imports <= FORMATTING, f"kiln {name} imports {sorted(imports - FORMATTING)}, not through kiln.api"
        called = {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        api_names = {a.asname or a.name for n in ast.walk(fn) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert called & api_names, f"kiln {name} imports from kiln.api but calls none of it"


def test_the_cli_check_sees_a_command_going_around_the_api() -> None:
    source = "def bench(source):\n    from kiln.bench.run import bench as run\n    run(source)\n"
    assert _kiln_imports(ast.parse(source)) - FORMATTING == {"kiln.bench.run"}


def _captured(monkeypatch: pytest.MonkeyPatch, name: str, *args: str) -> tuple[tuple[Any, ...], str]:
    """Invoke ``kiln <args>`` with kiln.api's ``name`` replaced: what the CLI passed it."""
    import kiln.api
    from kiln.cli import main
    from kiln.errors import ConfigError

    seen: list[tuple[Any, ...]] = []

    def fake(*call: Any, **_: Any) -> None:
        seen.append(call)
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(kiln.api, name, fake)
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2 and "stopped by the test" in result.output, result.output
    return seen[0], result.output


def test_bench_flags_become_one_bench_run_with_only_the_flags_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln.api import BenchRun

    (source, run), _ = _captured(
        monkeypatch, "benchmark", "bench", str(tmp_path), "-t", "onnxruntime", "--batch", "1,4", "--threads", "3"
    )
    assert source == tmp_path and isinstance(run, BenchRun)
    assert run.targets == ("onnxruntime",) and run.out == Path("build") and run.report_dir is None
    assert run.overrides.model_fields_set == {"batches", "threads"}
    assert run.overrides.batches == [1, 4] and run.overrides.threads == 3


def test_a_bad_size_list_is_one_line_before_the_api_is_called(tmp_path: Path) -> None:
    from kiln.cli import main

    result = CliRunner().invoke(main, ["bench", str(tmp_path), "--batch", "1,x"])
    assert result.exit_code == 2
    assert (
        result.output.strip() == "kiln: error: --batch '1,x': expected positive sizes separated by commas, e.g. 1,8,32"
    )


def test_package_and_verify_flags_become_their_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.api import PackageSettings, VerifySettings

    (_, settings), _ = _captured(
        monkeypatch, "package", "package", str(tmp_path), "-t", "onnxruntime:int8", "--format", "model-repository"
    )
    assert settings == PackageSettings(targets=("onnxruntime:int8",), format="model-repository")
    (_, checks), _ = _captured(monkeypatch, "verify", "verify", str(tmp_path), "--run", "--threads", "2")
    assert checks == VerifySettings(run=True, threads=2)


def test_a_model_build_folder_is_not_an_artifact(tmp_path: Path) -> None:
    from kiln.errors import ConfigError
    from kiln.targets.opening import artifact_manifest

    for key in ("eager-fp32", "onnxruntime-fp32"):
        (tmp_path / key).mkdir()
        (tmp_path / key / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"build folder with 2 artifacts; open one of them, e\.g\. .*eager-fp32"):
        artifact_manifest(tmp_path)
    (tmp_path / "empty").mkdir()
    for nothing in (tmp_path / "empty", tmp_path / "nowhere"):
        with pytest.raises(ConfigError, match=r"is not an artifact folder \(no manifest\.json in it\)"):
            artifact_manifest(nothing)
