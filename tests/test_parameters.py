"""No function in kiln/ outside the CLI takes more than six parameters: past that, a typed
settings object says what travels together (click's commands take one parameter per option)."""

from __future__ import annotations

import ast
from pathlib import Path

import kiln

ROOT = Path(kiln.__file__).parent
MOST = 6


def parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Its parameters, ``*args`` and ``**kwargs`` included, ``self`` and ``cls`` not."""
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [f"*{a.arg}" for a in (args.vararg, args.kwarg) if a is not None]
    return [n for n in names if n not in ("self", "cls")]


def too_many(source: str, where: str) -> list[str]:
    return [
        f"{where}:{node.lineno} {node.name} takes {len(parameters(node))}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and len(parameters(node)) > MOST
    ]


def test_no_function_outside_the_cli_takes_more_than_six_parameters() -> None:
    found = [
        line
        for path in sorted(ROOT.rglob("*.py"))
        if path.relative_to(ROOT).parts[0] != "cli"
        for line in too_many(path.read_text(), str(path.relative_to(ROOT.parent)))
    ]
    assert not found, "give these a typed settings object:\n" + "\n".join(found)


def test_the_count_takes_keywords_and_star_args_and_leaves_out_self() -> None:
    source = "class C:\n    def f(self, a, b, /, c, *d, e, f, **g): ...\n    def h(cls, a, b, c, d, e, f): ...\n"
    assert too_many(source, "x.py") == ["x.py:2 f takes 7"]
