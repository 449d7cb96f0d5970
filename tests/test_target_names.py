"""No module outside ``kiln/targets/`` branches on a target's name: what differs between targets
is read from the registry row (or asked of the target), so adding a target touches no other
package. A scan of every module's syntax tree finds a registered name used to decide: compared
(``==``, ``!=``, ``in``), matched (``case "openvino":``), or keyed in a table (``{"openvino": ...}``).
A name in a message, a docstring or a call argument decides nothing and is not flagged.
"""

from __future__ import annotations

import ast
from pathlib import Path

from kiln.targets import REGISTRY

KILN = Path(__file__).resolve().parents[1] / "kiln"
NAMES = frozenset(REGISTRY)


def _names_in(node: ast.expr) -> list[str]:
    """The registered names a literal operand holds: a string, or a tuple/list/set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES:
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [name for element in node.elts for name in _names_in(element)]
    return []


def _pattern_names(pattern: ast.pattern) -> list[str]:
    if isinstance(pattern, ast.MatchValue):
        return _names_in(pattern.value)
    if isinstance(pattern, ast.MatchOr):
        return [name for p in pattern.patterns for name in _pattern_names(p)]
    if isinstance(pattern, ast.MatchAs) and pattern.pattern is not None:
        return _pattern_names(pattern.pattern)
    return []


def branches_on_target_names(source: str) -> list[tuple[int, str]]:
    """(line, what) for each place ``source`` decides by a registered target name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found += [(node.lineno, f"compares with {name!r}") for name in _names_in(operand)]
        elif isinstance(node, ast.match_case):
            found += [(node.pattern.lineno, f"matches {name!r}") for name in _pattern_names(node.pattern)]
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                if key is not None:
                    found += [(key.lineno, f"keys a table by {name!r}") for name in _names_in(key)]
    return found


def test_the_scan_catches_each_kind_of_branch_and_spares_messages() -> None:
    planted = (
        'if manifest.target == "openvino":\n'
        "    pass\n"
        'if target in ("onnxruntime", "openvino"):\n'
        "    pass\n"
        "match target:\n"
        '    case "tensorrt" | "coreml":\n'
        "        pass\n"
        'RULES = {"aoti": 1}\n'
    )
    assert branches_on_target_names(planted) == [
        (1, "compares with 'openvino'"),
        (3, "compares with 'onnxruntime'"),
        (3, "compares with 'openvino'"),
        (6, "matches 'tensorrt'"),
        (6, "matches 'coreml'"),
        (8, "keys a table by 'aoti'"),
    ]
    innocent = (
        '"""Runs on openvino."""\n'
        'log.info("openvino", "built")\n'
        'error = f"target {name!r} is not openvino"\n'
        'TargetConfig(name="onnxruntime")\n'
        'if spec.serving.ovms and precision == "fp32":\n'
        "    pass\n"
    )
    assert branches_on_target_names(innocent) == []


def test_no_module_outside_the_targets_package_branches_on_a_target_name() -> None:
    found = [
        f"{path.relative_to(KILN.parent)}:{line}: {what}"
        for path in sorted(KILN.rglob("*.py"))
        if "targets" not in path.relative_to(KILN).parts[:1]
        for line, what in branches_on_target_names(path.read_text())
    ]
    assert not found, "read the registry row instead:\n" + "\n".join(found)
