"""What ``kiln tune`` hands back: the printed front, tune.html's page, and the winner as a
``kiln.toml`` that ``kiln build`` reproduces exactly (its cache key is checked when written)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from kiln.config import KilnConfig, TargetConfig, load_config
from kiln.errors import ConfigError
from kiln.pipeline.build import plan
from kiln.pipeline.summary import wide_console
from kiln.report import fmt
from kiln.report.tune import TunePage, TunePoint
from kiln.tune import pareto
from kiln.tune.records import Candidate, TuneResults

COLUMNS = ["candidate", "threads", "p50 ms", "items/s", "vs eager", "CV", "metric drop", "size", "verdict"]
_ORDER = ("measured", "rejected", "failed", "pruned", "not tried")


def verdict(c: Candidate) -> str:
    if c.winner:
        return "WINNER"
    if c.status == "measured":
        return "front" if c.front else "dominated"
    return f"{c.status}: {c.reason or ''}".rstrip(": ")


def ordered(results: TuneResults) -> list[Candidate]:
    """Winner, front, the rest measured (fastest first), then rejected, failed, pruned, not tried."""

    def key(c: Candidate) -> tuple[int, int, float]:
        return (_ORDER.index(c.status), 0 if c.winner else 1 if c.front else 2, pareto.cost(c, results.objective))

    return sorted(results.candidates, key=key)


def row(c: Candidate) -> list[str]:
    m = c.latest
    threads = f"{c.threads}" + (f" ({c.requests} req)" if c.requests > 1 else "")
    drop = "-" if c.metric_drop is None else f"{c.metric_drop:+.4f}"
    return [
        c.id,
        threads,
        fmt.ms(m.p50_ms) if m else "-",
        fmt.num(m.throughput) if m else "-",
        fmt.ratio(m.speedup_vs_eager) if m else "-",
        f"{m.cv:.1%}" + (" unstable" if m.unstable else "") if m else "-",
        drop,
        fmt.size(c.size_bytes),
        verdict(c),
    ]


def summary_lines(results: TuneResults) -> list[str]:
    fp = results.fingerprint
    drop = (
        "the config's parity gate" if results.max_metric_drop is None else f"max metric drop {results.max_metric_drop}"
    )
    measured = sum(c.status == "measured" for c in results.candidates)
    return [
        f"objective {results.objective} ({results.mode} mode), batch {results.batch}, {drop}",
        f"{len(results.candidates)} candidates: {measured} measured, "
        + ", ".join(f"{sum(c.status == s for c in results.candidates)} {s}" for s in _ORDER[1:]),
        f"{len(results.runs)} bench run(s) in {results.elapsed_s:.0f} s of a {results.budget_minutes:g}-minute budget"
        + (" (ran out: some candidates not tried)" if results.budget_exhausted else ""),
        f"machine {fp.id} ({fp.cpu}, {fp.physical_cores} cores); figures from a shared machine are noisy",
    ]


def print_results(results: TuneResults, folder: Path) -> None:
    console = wide_console()
    table = Table(title=f"kiln tune: {results.model}: the Pareto front ({results.objective})")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("candidate", "verdict") else "right")
    for c in ordered(results):
        if c.status == "measured":
            style = "bold" if c.winner else "" if c.front else "dim"
            table.add_row(*[escape(v) for v in row(c)], style=style)
    console.print(table)
    others = [c for c in results.candidates if c.status != "measured"]
    for c in others:
        console.print(f"  {escape(c.id)}: {escape(verdict(c))}", highlight=False, soft_wrap=True)
    for line in summary_lines(results):
        console.print(line, highlight=False)
    best = results.get(results.winner) if results.winner else None
    if best is not None and best.latest is not None:
        console.print(
            f"winner: {escape(best.id)} ({best.target}:{best.precision}, options {json.dumps(best.options)}, "
            f"{best.threads} threads): {fmt.ms(best.latest.p50_ms)} ms p50, {fmt.num(best.latest.throughput)} items/s, "
            f"{fmt.ratio(best.latest.speedup_vs_eager)} eager",
            highlight=False,
        )
    console.print(f"results: {folder / 'tune.json'}, {folder / 'tune.html'}", highlight=False)


def page(results: TuneResults) -> TunePage:
    unit = "p50 ms" if results.objective == "latency" else "items/s"
    points = []
    for c in results.candidates:
        if c.status != "measured" or (m := c.latest) is None:
            continue
        kind = "winner" if c.winner else "front" if c.front else "dominated"
        speed = m.p50_ms if results.objective == "latency" else m.throughput
        points.append(TunePoint(c.id, speed, c.metric_drop, c.size_bytes, kind))
    rows = ordered(results)
    classes = ["winner" if c.winner else "front" if c.front else "" for c in rows]
    sections = [
        ("Left out of the search", [f"{s.target}:{s.precision}: {s.reason}" for s in results.skipped]),
        ("Runs", [f"{r.name}: {r.cells} cells, {r.threads} threads, {r.requests} request(s)" for r in results.runs]),
    ]
    if results.notes:
        sections.append(("Notes", results.notes))
    return TunePage(
        title=f"kiln tune: {results.model}",
        lines=[f"Run {results.created} by kiln {results.kiln_version} from {results.config}.", *summary_lines(results)],
        speed_unit=unit,
        points=points,
        columns=COLUMNS,
        rows=[row(c) for c in rows],
        row_classes=classes,
        sections=sections,
    )


# ---- the winner as a kiln.toml ----


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else "nan" if math.isnan(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def to_toml(sections: dict[str, Any], header: str = "") -> str:
    """Tables of scalars and inline values, and arrays of tables (what a kiln.toml holds)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for name, body in sections.items():
        rows = body if isinstance(body, list) else [body]
        for item in rows:
            lines += ["", f"[[{name}]]" if isinstance(body, list) else f"[{name}]"]
            lines += [f"{_key(k)} = {_toml_value(v)}" for k, v in item.items() if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def _rebase(ref: str | None, old: Path, new: Path) -> str | None:
    """A path in a config (``file.py:fn``, ``hf:./folder``, ``gguf:model.gguf``, ``data.npz``)
    relative to a new folder."""
    if ref is None or old == new:
        return ref
    prefix = next((p for p in ("hf:", "gguf:") if ref.startswith(p)), "")
    body = ref.removeprefix(prefix)
    path, sep, rest = body.partition(":") if ".py:" in body else (body, "", "")
    if Path(path).is_absolute() or not (old / path).exists():
        return ref
    return prefix + os.path.relpath(old / path, new) + sep + rest


def _rebased(config: KilnConfig, new: Path) -> dict[str, Any]:
    old = config.root.resolve()
    model = config.model.model_dump(mode="json", exclude_defaults=True)
    model["source"] = _rebase(config.model.source, old, new)
    if "adapter" in model:
        adapters = [_rebase(a, old, new) for a in config.model.adapters]
        model["adapter"] = adapters[0] if isinstance(config.model.adapter, str) else adapters
    out: dict[str, Any] = {"model": model}
    if export := config.export.model_dump(mode="json", exclude_defaults=True):
        out["export"] = export
    for name in ("calibration", "evaluation", "recovery"):
        spec = getattr(config, name)
        if spec is not None:
            body = spec.model_dump(mode="json", exclude_defaults=True)
            body["source"] = _rebase(spec.source, old, new)
            if name == "evaluation" and ".py:" in spec.metric:
                body["metric"] = _rebase(spec.metric, old, new)
            out[name] = body
    generation = config.generation.model_dump(mode="json", exclude_defaults=True)
    for name in ("tokenizer", "heldout"):
        if name in generation:
            generation[name] = _rebase(generation[name], old, new)
    if isinstance(generation.get("prompts"), str):
        generation["prompts"] = _rebase(generation["prompts"], old, new)
    if generation:
        out["generation"] = generation
    return out


def winner_target(config: KilnConfig, winner: Candidate) -> TargetConfig:
    """The [[target]] the winner was built from: the config's own row for it (tolerance kept),
    with the options the search chose."""
    base = next((t for t in config.target if t.name == winner.target and t.precision == winner.precision), None)
    row = (
        base.model_copy(update={"prune": None})
        if base
        else TargetConfig(name=winner.target, precision=winner.precision)
    )
    return row.model_copy(update={"options": dict(winner.options)})


def write_config(config: KilnConfig, results: TuneResults, path: Path, out: Path) -> bool:
    """Write the winner as a kiln.toml at ``path``; True when ``kiln build`` of it computes the
    winner's cache key (always, beside the original config; elsewhere the paths it names are
    rewritten and the key, which hashes them, differs while the artifact's recipe does not)."""
    winner = results.get(results.winner) if results.winner else None
    if winner is None:
        raise ConfigError(
            "no candidate passed its gate and was measured, so there is no winner to write; widen the budget"
        )
    target = winner_target(config, winner)
    sections = _rebased(config, path.parent.resolve())
    entry: dict[str, Any] = {"name": target.name, "precision": target.precision}
    if target.options:
        entry["options"] = target.options
    if target.tolerance is not None:
        entry["tolerance"] = target.tolerance.model_dump(mode="json", exclude_unset=True)
    sections["target"] = [entry]
    bench = {"batch": [results.batch], "threads": winner.threads, "mode": results.mode}
    if results.mode == "throughput":
        bench["requests"] = winner.requests
    kept = config.bench.model_dump(
        mode="json", exclude_defaults=True, exclude={"batches", "threads", "mode", "requests"}
    )
    sections["bench"] = {**bench, **kept}
    if config.gates.max_metric_drop is not None:
        sections["gates"] = {"max_metric_drop": config.gates.max_metric_drop}
    latest = winner.latest
    figure = f"{fmt.ms(latest.p50_ms)} ms p50, {fmt.num(latest.throughput)} items/s" if latest else "not measured"
    header = (
        f"Written by kiln tune {results.config} ({results.created}): the winner {winner.id}\n"
        f"({figure} at batch {results.batch} on {results.fingerprint.id}).\n"
        "kiln build this file to reproduce the artifact; kiln bench it to measure it again."
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(to_toml(sections, header))
    os.replace(tmp, path)
    written = load_config(path)
    return plan(written, out).targets[target.key].key == winner.cache_key
