"""The table ``kiln build`` ends with: one row per target, from the manifests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from kiln.config import KilnConfig
from kiln.manifest import Gate

if TYPE_CHECKING:
    from kiln.pipeline.build import TargetResult


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def wide_console() -> Console:
    """Tables in CI logs and pipes are not cut to 80 columns."""
    return Console(width=max(Console().width, 160))


def print_summary(config: KilnConfig, results: list[TargetResult], out: Path) -> None:
    table = Table(title=f"kiln build: {config.model.name} -> {out / config.model.name}")
    for col in (
        "target",
        "precision",
        "runs as",
        "status",
        "parity (worst figure)",
        "metric (drop)",
        "size",
        "build s",
    ):
        table.add_column(col, justify="right" if col in ("size", "build s") else "left")
    for r in results:
        m = r.manifest
        if r.error is not None or m is None:
            parity, metric = f"[red]{type(r.error).__name__}[/red]", "-"
        else:
            parity, metric = _verdict(m.gate), _metric(m.gate)
        table.add_row(
            r.target.name,
            r.target.precision
            + (f" {r.target.prune.slug}" if r.target.prune else "")
            + (f" (member {r.target.member})" if r.target.member else ""),
            (m.execution.execution_precision if m else None) or "-",
            r.status,
            parity,
            metric,
            human_size(m.size_bytes) if m else "-",
            f"{m.build_seconds if m else r.seconds:.1f}",
        )
    # What the source is, where a manifest records it: a GGUF's type and what the gates compare with.
    source = next((r.manifest.gguf for r in results if r.manifest is not None and r.manifest.gguf), None)
    if source is not None:
        table.caption = f"source: {source.line}"
    wide_console().print(table)


def _verdict(gate: Gate) -> str:
    figures = gate.generation or gate.parity  # a causal LM is judged on what it generates
    if figures is None:
        return gate.reason or "-"
    verdict = "[green]pass[/green]" if not figures.breaches else "[red]FAIL[/red]"
    return f"{verdict} {figures.worst}" + (" (simulated)" if gate.simulated else "")


def _metric(gate: Gate) -> str:
    ev = gate.evaluation
    if ev is None:
        return "-"
    text = f"{ev.metric.rpartition(':')[2]} {ev.value:.4f} ({ev.drop:+.4f})"
    return f"[red]{text}[/red]" if gate.metric_breached else text
