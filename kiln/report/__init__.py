"""Reports from ``results.json``: ``report.md``, ``report.html``, the console table and
``kiln compare``, all reading :class:`kiln.results.Results`.

``results.json`` is the source of truth; the Markdown and HTML pages are pure functions of it, so
``kiln report results.json`` re-renders them at any time. Its JSON Schema is generated from the
models (:mod:`kiln.report.schema`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kiln.errors import ConfigError
from kiln.report.roofline import count_against_peak
from kiln.results import Results
from kiln.store import write_json

RESULTS = "results.json"


def parse_results(data: Any, where: str = RESULTS) -> Results:
    """The typed results, or one ``ConfigError`` line naming the first place ``data`` is wrong.
    Fractions of peak are counted again by today's rules (:mod:`kiln.report.roofline`): a file
    from an older kiln counted an int8-dynamic cell against the fp32 peak."""
    try:
        results = Results.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        at = "/".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(
            f"{where}: not a valid kiln results file at {at}: {first['msg'][:200]}; re-run kiln bench"
        ) from err
    count_against_peak(results.cells, results.peak)
    return results


def load_results(path: Path) -> Results:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}; pass the results.json that kiln bench wrote") from err
    except ValueError as err:
        raise ConfigError(f"{path} is not JSON ({err}); pass the results.json that kiln bench wrote") from err
    return parse_results(data, str(path))


def results_in(folder: Path) -> list[Path]:
    """The ``*/results.json`` of a suite run folder that are benchmark results, in name order: a
    JSON object of ``kiln.results/*`` (or naming no schema); a fleet's ``results.json``
    (``kiln.fleet/1``) beside them is not one."""
    found = []
    for path in sorted(folder.glob(f"*/{RESULTS}")):
        try:
            schema_id = json.loads(path.read_text()).get("schema")
        except (OSError, ValueError, AttributeError):
            continue
        if schema_id is None or str(schema_id).startswith("kiln.results/"):
            found.append(path)
    return found


def write_reports(results: Results, out_dir: Path, html: bool = True, with_results: bool = True) -> list[Path]:
    """Write ``results.json`` (unless re-rendering it), ``report.md`` and (optionally)
    ``report.html``; returns the paths."""
    from kiln.report.html import render_html
    from kiln.report.markdown import render_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.md"]
    if with_results:
        write_json(out_dir / RESULTS, results.to_json())
        written.insert(0, out_dir / RESULTS)
    (out_dir / "report.md").write_text(render_markdown(results))
    if html:
        (out_dir / "report.html").write_text(render_html(results))
        written.append(out_dir / "report.html")
    return written
