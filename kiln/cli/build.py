"""``kiln build``, ``kiln export``, ``kiln targets``, ``kiln doctor``: make artifacts and say what this machine can make."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kiln.cli import options
from kiln.cli.base import _console, command, main
from kiln.cli.options import attach
from kiln.errors import ConfigError


def _skip_memory_check() -> click.Option:
    """``--skip-memory-check``: go on where the estimated peak memory is more than this machine has."""
    return click.Option(
        ["--skip-memory-check"],
        is_flag=True,
        envvar="KILN_SKIP_MEMORY_CHECK",
        help="Go on even when the estimated peak memory is more than this machine has (also KILN_SKIP_MEMORY_CHECK=1).",
    )


@main.command()
@click.argument("config_path", metavar="CONFIG.toml", type=click.Path(path_type=Path))
@attach(
    options.targets("Build only these targets (repeatable); overrides [[target]] in the config."),
    options.out(Path("build"), "Build folder; artifacts go to OUT/<model>/<target>-<precision>/."),
    click.Option(["--quiet", "-q"], is_flag=True, help="No progress: only the final table and errors."),
    _skip_memory_check(),
)
@command
def build(config_path: Path, targets: tuple[str, ...], out: Path, quiet: bool, skip_memory_check: bool) -> None:
    """Export the model once and build, check and describe every target's artifact.

    Progress: a live line on a terminal (stderr), else one line on stdout as each stage starts and
    ends, with its time and the peak memory so far; stderr carries errors and gate breaches."""
    from kiln.api import build as run_build
    from kiln.pipeline.progress import reporter
    from kiln.pipeline.summary import print_summary

    with reporter(_console(), quiet, log=sys.stdout) as progress:
        done = run_build(config_path, out, targets, progress, check_memory=not skip_memory_check)
    print_summary(done.config, list(done.targets), done.out)
    for result in done.failures:
        if result.error is not None:
            click.echo(f"kiln: error: {result.target.key}: {result.error}", err=True)
        else:
            assert result.manifest is not None
            for breach in result.manifest.gate.breaches:
                click.echo(f"kiln: gate: {result.target.key}: {breach}", err=True)
    if done.failures:
        sys.exit(done.exit_code)


@main.command()
@click.argument("source")
@click.option(
    "--input",
    "-i",
    "inputs",
    multiple=True,
    required=True,
    metavar="NAME:DIMS",
    help="An input and its shape, e.g. x:batch,3,224,224 (repeatable; dtype with NAME:DIMS:int64).",
)
@click.option(
    "--dim", "dims", multiple=True, metavar="NAME=MIN:OPT:MAX", help="Range of a named dim, e.g. batch=1:1:32."
)
@click.option("--opset", type=int, default=20, show_default=True)
@click.option("--strict/--no-strict", default=False, show_default=True, help="torch.export strict mode.")
@attach(options.out(None, "Build folder (default build/<name>)."), _skip_memory_check())
@command
def export(
    source: str,
    inputs: tuple[str, ...],
    dims: tuple[str, ...],
    opset: int,
    strict: bool,
    out: Path | None,
    skip_memory_check: bool,
) -> None:
    """Capture SOURCE with torch.export and lower it to ONNX (no targets)."""
    from kiln.config import parse_config
    from kiln.pipeline.build import export_only

    model = _model_from_flags(source, inputs, dims)
    root = Path.cwd()
    config = parse_config({"model": model, "export": {"opset": opset, "strict": strict}}, root, where="kiln export")
    out_root = out.parent if out else Path("build")
    if out is not None:
        config = config.model_copy(update={"model": config.model.model_copy(update={"name": out.name})})
    folder = export_only(config, out_root, check_memory=not skip_memory_check)
    click.echo(f"exported {source} -> {folder}")


def _model_from_flags(source: str, inputs: tuple[str, ...], dims: tuple[str, ...]) -> dict[str, Any]:
    specs, ranges = [], {}
    for item in inputs:
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[1]:
            raise ConfigError(f"--input {item!r}: expected NAME:DIMS such as x:batch,3,224,224")
        shape = [int(s) if s.isdigit() else s for s in parts[1].split(",")]
        specs.append({"name": parts[0], "shape": shape, **({"dtype": parts[2]} if len(parts) == 3 else {})})
    for item in dims:
        name, _, spec = item.partition("=")
        values = spec.split(":")
        if not name or len(values) != 3 or not all(v.isdigit() for v in values):
            raise ConfigError(f"--dim {item!r}: expected NAME=MIN:OPT:MAX such as batch=1:1:32")
        ranges[name] = dict(zip(("min", "opt", "max"), map(int, values), strict=True))
    for spec in specs:
        for size in spec["shape"]:
            if isinstance(size, str):
                ranges.setdefault(size, {"min": 1, "opt": 1, "max": 64})
    stem = Path(source.split(":")[0].removeprefix("hf:")).stem or "model"
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in stem)
    return {"name": name, "source": source, "inputs": specs, "dims": ranges}


@main.command()
def targets() -> None:
    """Every registered target: can it build and run here, and if not, what it needs."""
    from rich.markup import escape
    from rich.table import Table

    from kiln.pipeline.summary import wide_console
    from kiln.targets import REGISTRY, availability

    table = Table(title="kiln targets")
    for col in ("target", "precisions", "build", "run", "QAT", "needs / why not", "extra"):
        table.add_column(col)
    for name, spec in REGISTRY.items():
        avail = availability(name)
        # Precisions that need one more package than their target, where it is missing.
        extra_needs = [
            f"{name}:{p.name} {availability(name, p.name).reason}"
            for p in spec.precisions
            if avail.build and not availability(name, p.name).build
        ]
        extras = sorted({pkg.extra for p in spec.precisions for pkg in spec.packages_for(p.name) if pkg.extra})
        table.add_row(
            name,
            ", ".join(spec.precision_names),
            "yes" if avail.build else "no",
            "yes" if avail.run else "no",
            # [recovery] qat = true: the precisions with a quantization-aware training path
            ", ".join(p.name for p in spec.precisions if p.qat) or "none",
            escape("; ".join([avail.reason or spec.summary, *extra_needs])),
            escape(", ".join(f"kiln[{e}]" for e in extras)) if extras else "-",
        )
    wide_console().print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the fingerprint as JSON.")
def doctor(as_json: bool) -> None:
    """This machine: CPU model and flags, cores, memory, GPUs, OS and toolchain versions."""
    import json

    from kiln.quant.saturation import host_saturates
    from kiln.targets import fingerprint

    fp = fingerprint()
    if as_json:
        click.echo(json.dumps(fp.model_dump(mode="json"), indent=2))
        return
    flags = ", ".join(f for f, on in fp.flags.items() if on) or "none of note"
    gpus = "; ".join(f"{g.name} (driver {g.driver})" for g in fp.gpus) or "none"
    click.echo(f"cpu:       {fp.cpu} ({fp.arch})")
    click.echo(f"flags:     {flags}")
    if host_saturates():
        click.echo("int8:      u8 x s8 kernels saturate here (no VNNI): int8 builds use 7-bit weights")
    click.echo(f"cores:     {fp.physical_cores} physical, {fp.logical_cores} logical")
    click.echo(f"memory:    {fp.memory_gib} GiB")
    click.echo(f"gpu:       {gpus}")
    click.echo(f"os:        {fp.os}, Python {fp.python}")
    for dist, ver in fp.toolchain.items():
        click.echo(f"{dist + ':':<11}{ver}")
    click.echo(f"fingerprint: {fp.id}")
