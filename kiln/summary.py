"""The table ``kiln build`` ends with: one row per target, from the manifests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from kiln.config import KilnConfig

if TYPE_CHECKING:
    from kiln.build import TargetResult


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
        m = r.manifest or {}
        gate = m.get("gate", {})
        if r.error is not None:
            parity = f"[red]{type(r.error).__name__}[/red]"
        elif gate.get("parity"):
            verdict = "[green]pass[/green]" if not gate["parity"]["breaches"] else "[red]FAIL[/red]"
            parity = f"{verdict} {gate['parity']['worst']}" + (" (simulated)" if gate.get("simulated") else "")
        else:
            parity = gate.get("reason") or "-"
        ev = gate.get("evaluation")
        metric = f"{ev['metric'].rpartition(':')[2]} {ev['value']:.4f} ({ev['drop']:+.4f})" if ev else "-"
        if ev and not gate.get("passed", True) and any("metric" in b for b in gate.get("breaches", [])):
            metric = f"[red]{metric}[/red]"
        table.add_row(
            r.target.name,
            r.target.precision + (f" {r.target.prune.slug}" if r.target.prune else ""),
            str(m.get("execution", {}).get("execution_precision", "-")),
            r.status,
            parity,
            metric,
            human_size(m["size_bytes"]) if "size_bytes" in m else "-",
            f"{m.get('build_seconds', r.seconds):.1f}" if m else f"{r.seconds:.1f}",
        )
    wide_console().print(table)
