"""The JSON Schema of ``results.json``, generated from :class:`kiln.results.Results`.

``python -m kiln.report.schema`` writes ``kiln/schemas/results.schema.json`` (``--check`` only
compares); a test keeps the committed file equal to :func:`results_schema`. The schema describes
what kiln writes (every field it always writes is required) for tools outside kiln; kiln itself
reads a results file through the models.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from kiln.results import RESULTS_SCHEMA, Results

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "results.schema.json"
DESCRIPTION = (
    "What `kiln bench` writes to results.json: the source of truth for report.md, report.html and "
    "`kiln compare`. Times are milliseconds, throughput is items (batch rows) per second, sizes and "
    "memory are bytes."
)


def results_schema() -> dict[str, Any]:
    """The schema of the results files this kiln writes (``kiln.results/1``)."""
    version = RESULTS_SCHEMA.rpartition("/")[2]
    body = Results.model_json_schema(by_alias=True, mode="serialization")
    body.pop("title", None)
    body.pop("description", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://kiln.dev/schemas/results/{version}",
        "title": f"kiln benchmark results, version {version} ({RESULTS_SCHEMA})",
        "description": DESCRIPTION,
        **body,
    }


def render() -> str:
    return json.dumps(results_schema(), indent=2) + "\n"


def shipped_schema() -> dict[str, Any]:
    """The schema file installed with the package."""
    return json.loads(resources.files("kiln").joinpath("schemas/results.schema.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.report.schema", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = SCHEMA_FILE.read_text() if SCHEMA_FILE.is_file() else ""
        if current != text:
            print(f"{SCHEMA_FILE} is out of date; run python -m kiln.report.schema", file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.write_text(text)
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
