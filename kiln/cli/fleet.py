"""``kiln fleet`` and ``kiln node``: many models x targets x kinds of hardware on Ray."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kiln.cli import options
from kiln.cli.base import command, main
from kiln.cli.options import Group

if TYPE_CHECKING:
    from kiln.fleet.runner import FleetOptions

# ---- the fleet: fleet, node (kiln/fleet/) ----


def _fleet_options(**flags: Any) -> FleetOptions:
    from kiln.fleet.runner import FleetOptions

    return FleetOptions(**flags, verbose=os.environ.get("KILN_VERBOSE") == "1")


_FLEET_OPTIONS = Group(
    "fleet_options",
    [
        click.Argument(["suite"], metavar="SUITE.toml", type=click.Path(path_type=Path)),
        click.Option(
            ["--address"],
            default="local",
            show_default=True,
            help="local (an in-process cluster of this machine), auto (the running cluster), "
            "host:port or ray://host:port.",
        ),
        click.Option(
            ["--store"], help="The shared store: a folder, a shared filesystem path or an fsspec URL (s3://bucket/p)."
        ),
        options.out(Path("build/fleet"), "Reports."),
        click.Option(
            ["--jobs", "-j"], type=click.IntRange(min=1), help="CPUs of the in-process cluster (default: all)."
        ),
        click.Option(["--only"], multiple=True, metavar="MODEL", help="Only this model of the suite (repeatable)."),
        click.Option(["--rebench"], is_flag=True, help="Measure again what the store has measured already."),
        click.Option(
            ["--retries"], type=click.IntRange(min=0), default=2, show_default=True, help="Re-runs of a dead worker."
        ),
        click.Option(
            ["--pending-timeout"],
            type=click.FloatRange(min=1),
            default=600.0,
            show_default=True,
            help="Seconds a ready task may wait for a node before it is reported skipped.",
        ),
    ],
    _fleet_options,
)


@main.command()
@command
@_FLEET_OPTIONS
def fleet(fleet_options: FleetOptions) -> None:
    """Build and benchmark a suite's models x targets as Ray tasks, on every kind of hardware in the
    cluster, through one content-addressed store; write OUT/results.json and OUT/report.md."""
    from kiln.fleet.runner import run_fleet

    out = fleet_options.out
    done = run_fleet(fleet_options, progress=lambda line: click.echo(f"kiln: {line}", err=True))
    counts = ", ".join(f"{n} {status}" for status, n in sorted(done.counts().items()))
    click.echo(f"fleet: {counts}; {len(done.runs)} runs on {len(done.fingerprints())} hardware kinds")
    click.echo(f"reports: {out / 'results.json'}, {out / 'report.md'}")
    for stage in done.stages:
        if stage.status == "failed" or stage.exit_code:
            click.echo(f"kiln: error: {stage.id}: {stage.reason}", err=True)
    if done.exit_code:
        sys.exit(done.exit_code)


@main.command()
@click.option("--address", metavar="HOST:PORT", help="The head node (ray start --head) to join.")
@click.option("--head", is_flag=True, help="Start the head node itself, with this machine's resources.")
@click.option("--port", type=click.IntRange(1, 65535), default=6379, show_default=True, help="The head's port.")
@click.option("--kind", help="Name this node's hardware kind (default: its fingerprint id).")
@click.option("--num-cpus", type=click.IntRange(min=1), help="CPUs kiln tasks may use here (default: all).")
@click.option("--print", "show", is_flag=True, help="Print the resources (JSON) and exit, e.g. for KubeRay.")
@command
def node(address: str | None, head: bool, port: int, kind: str | None, num_cpus: int | None, show: bool) -> None:
    """Start a Ray node that advertises this machine's hardware (kiln doctor's fingerprint) as
    resources, in the foreground: stopping this process stops the node."""
    import json

    from kiln.fleet.node import NodeOptions, start
    from kiln.fleet.resources import here

    if show:
        click.echo(json.dumps(here(kind), indent=2, sort_keys=True))
        return
    start(NodeOptions(address=address, head=head, port=port, kind=kind, num_cpus=num_cpus))
