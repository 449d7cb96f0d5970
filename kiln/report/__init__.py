"""Reports from ``results.json``: the versioned schema, ``report.md`` and ``report.html``.

``results.json`` is the source of truth; the Markdown and HTML pages are pure functions of it, so
``kiln report results.json`` re-renders them at any time.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError
from kiln.store import write_json

RESULTS = "results.json"


def schema() -> dict[str, Any]:
    """The JSON Schema of ``results.json`` shipped in the package."""
    return json.loads(resources.files("kiln").joinpath("schemas/results.schema.json").read_text())


def validate(results: dict[str, Any], where: str = RESULTS) -> None:
    """Raise one ``ConfigError`` line naming the first place ``results`` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    error = next(iter(sorted(validator.iter_errors(results), key=lambda e: list(e.path))), None)
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"{where}: not a valid kiln results file at {at}: {error.message[:200]}; re-run kiln bench")


def load_results(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}; pass the results.json that kiln bench wrote") from err
    except ValueError as err:
        raise ConfigError(f"{path} is not JSON ({err}); pass the results.json that kiln bench wrote") from err
    validate(data, str(path))
    return data


def write_reports(results: dict[str, Any], out_dir: Path, html: bool = True, with_results: bool = True) -> list[Path]:
    """Validate and write ``results.json`` (unless re-rendering it), ``report.md`` and
    (optionally) ``report.html``; returns the paths."""
    from kiln.report.html import render_html
    from kiln.report.markdown import render_markdown

    validate(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.md"]
    if with_results:
        write_json(out_dir / RESULTS, results)
        written.insert(0, out_dir / RESULTS)
    (out_dir / "report.md").write_text(render_markdown(results))
    if html:
        (out_dir / "report.html").write_text(render_html(results))
        written.append(out_dir / "report.html")
    return written
