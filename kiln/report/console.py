"""The table ``kiln bench`` prints: one row per cell, flags underneath."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kiln.report import fmt, generation, profile
from kiln.results import FailedCell, Results

CONSOLE_LEFT_OUT = ("ITL p90 ms", "load s")  # in report.md; the console keeps the gate readable


def _generation_table(results: Results) -> Table:
    s = results.settings
    table = Table(title=f"kiln bench: {results.model} (generation, {s.new_tokens} new tokens, {s.threads} threads)")
    columns = generation.columns(results)
    keep = [i for i, col in enumerate(columns) if col not in CONSOLE_LEFT_OUT]
    for i in keep:
        col = columns[i]
        left = col in ("target", "runs as", "gate")
        table.add_column(col, justify="left" if left else "right", min_width=24 if col == "gate" else None)
    for c in results.cells:
        values = [escape(v) for v in generation.row(results, c, " unstable")]
        if isinstance(c, FailedCell):
            table.add_row(values[0], "-", f"[dim]{c.status}[/dim]", *[""] * (len(keep) - 4), escape(c.reason)[:60])
            continue
        table.add_row(*[values[i] for i in keep])
    return table


def print_results(results: Results) -> None:
    if results.generative:
        _print(results, _generation_table(results))
        return
    table = Table(title=f"kiln bench: {results.model} ({results.settings.mode}, {results.settings.threads} threads)")
    for col in (
        "batch",
        "target",
        "runs as",
        "p50 ms",
        "p90 ms",
        "CV",
        "stalls",
        "items/s",
        "vs eager [95% CI]",
        "of peak",
        "size",
        "peak RSS",
        "accuracy",
    ):
        table.add_column(col, justify="left" if col in ("target", "runs as", "accuracy") else "right")
    for c in results.cells:
        if isinstance(c, FailedCell):
            table.add_row(str(c.batch), c.key, "-", f"[dim]{c.status}[/dim]", *[""] * 8, escape(c.reason)[:60])
            continue
        lat = c.latency
        cv = fmt.pct(lat.cv) + (" [yellow]unstable[/yellow]" if lat.unstable else "")
        table.add_row(
            str(c.batch),
            c.key,
            c.execution_precision or "-",
            fmt.ms(lat.p50_ms),
            fmt.ms(lat.p90_ms),
            cv,
            fmt.stalls(c),
            fmt.num(lat.throughput),
            fmt.speedup(c),
            fmt.pct(c.roofline_fraction),
            fmt.size(c.size_bytes),
            fmt.size(c.peak_rss_bytes),
            fmt.accuracy(c),
        )
    _print(results, table)


def _print(results: Results, table: Table) -> None:
    console = Console(width=max(Console().width, 180))
    console.print(table)
    for note in generation.notes(results):
        console.print(f"note: {escape(note)}")
    if results.bandwidth:
        console.print(f"memory bandwidth: {escape(generation.bandwidth_line(results))}")
    # One line per kind of flag: a kind on one cell in full, on several as a count (report.md lists each).
    for kind, flagged in fmt.flag_groups(results).items():
        if len(flagged) == 1:
            where, flag = flagged[0]
            console.print(f"[yellow]flag[/yellow] {escape(where)}: {escape(flag)}")
            continue
        names = ", ".join(where for where, _ in flagged[:4]) + (", ..." if len(flagged) > 4 else "")
        console.print(f"[yellow]flag[/yellow] {len(flagged)} cells: {escape(kind)} ({escape(names)}), see report.md")
    for line in profile.console_lines(results):
        console.print(f"[cyan]profile[/cyan] {escape(line)}")
    console.print(f"machine load: {escape(fmt.machine_load(results))}")
    for line in fmt.peak_check(results):
        if "above the estimate" in line:
            console.print(f"[yellow]peak[/yellow] {escape(line)}")
    for line in fmt.figure_warnings(results):
        console.print(f"[yellow]machine figures[/yellow] {escape(line)}")
    console.print(f"fingerprint: {results.fingerprint.id}")
