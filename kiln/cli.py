"""The ``kiln`` command line: thin click commands that build a config object and call the API.

Nothing here imports a toolchain, so ``kiln --help`` is instant and a missing extra breaks only
its own target. A ``KilnError`` becomes one line on stderr and its exit code (2 bad input,
3 parity or accuracy gate, 4 regression, 5 unavailable here, 6 toolchain failure, 7 a bundle's
integrity); ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kiln import __version__
from kiln.errors import ConfigError, KilnError, KilnWarning


def _fail(err: KilnError, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(err)
    click.echo(f"kiln: error: {err}", err=True)
    sys.exit(err.exit_code)


# Failures of the machine or the folders a user chose, not of kiln: one line, exit 2.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EISDIR,
}


def _describe_os_error(err: OSError) -> str:
    where = err.filename or "a file"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space or choose another --out; nothing half-written was kept"
    elif err.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        fix = "a file is in the way of a folder (or the other way round): choose another --out or remove it"
    else:
        fix = "choose a folder you can write to (--out)"
    return f"cannot write {where}: {err.strerror}; {fix}"


def _one_line_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    return f"kiln: warning: {message}\n"


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--verbose`` and turn a ``KilnError`` into one line and its exit code."""

    @click.option("--verbose", "-v", is_flag=True, help="Show tracebacks and toolchain output.")
    @functools.wraps(fn)
    def wrapper(*args: Any, verbose: bool, **kwargs: Any) -> Any:
        warnings.formatwarning = _one_line_warning
        disabled = logging.root.manager.disable
        if verbose:
            os.environ["KILN_VERBOSE"] = "1"
        else:
            _quiet_toolchains()
            # A user error is one line: no toolchain's log records (a corrupt .pt2 makes torch log
            # its own traceback) reach stderr; kiln reports through click, not logging.
            logging.disable(logging.CRITICAL)
        try:
            return fn(*args, **kwargs)
        except KilnError as err:
            _fail(err, verbose)
        except OSError as err:
            if err.errno not in _ENVIRONMENT_ERRNOS:
                raise  # anything else is a bug in kiln: keep its traceback
            _fail(ConfigError(_describe_os_error(err)), verbose)
        except KeyboardInterrupt:
            click.echo("kiln: interrupted; nothing half-written was kept, run the command again to resume", err=True)
            sys.exit(130)
        finally:
            logging.disable(disabled)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kiln")
def main() -> None:
    """kiln: fire a PyTorch model into verified artifacts for every runtime."""


def _quiet_toolchains() -> None:
    """Toolchains warn about their own internals (deprecations, untested versions) on every
    call; a user can act on none of it. The registry names each target's chatty loggers and the
    imports it blocks; ``--verbose`` keeps it all."""
    from kiln.targets import quiet_toolchains

    # Toolchains' own warnings are hidden (they name internals a user cannot act on); kiln's
    # own stay, one line each.
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", category=KilnWarning)
    # transformers draws loading bars and logs per model; kiln reports its own progress.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    quiet_toolchains()


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@main.command()
@click.argument("config_path", metavar="CONFIG.toml", type=click.Path(path_type=Path))
@click.option(
    "--target",
    "-t",
    "targets",
    multiple=True,
    metavar="NAME[:PRECISION]",
    help="Build only these targets (repeatable); overrides [[target]] in the config.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("build"),
    show_default=True,
    help="Build folder; artifacts go to OUT/<model>/<target>-<precision>/.",
)
@command
def build(config_path: Path, targets: tuple[str, ...], out: Path) -> None:
    """Export the model once and build, check and describe every target's artifact."""
    from kiln.build import build as run_build
    from kiln.config import load_config, with_targets
    from kiln.summary import print_summary

    config = with_targets(load_config(config_path), list(targets))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out or remove the file")
    if not config.target:
        raise ConfigError(f"{config_path}: no [[target]] to build; add one or pass --target NAME[:PRECISION]")
    console = _console()
    with console.status("starting") as status:
        results = run_build(config, out, progress=lambda msg: status.update(msg))
    print_summary(config, results, out)
    failures = [r for r in results if r.exit_code]
    for result in failures:
        if result.error is not None:
            click.echo(f"kiln: error: {result.target.key}: {result.error}", err=True)
        else:
            assert result.manifest is not None
            for breach in result.manifest.gate.breaches:
                click.echo(f"kiln: gate: {result.target.key}: {breach}", err=True)
    if failures:
        sys.exit(failures[0].exit_code)


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
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="Build folder (default build/<name>).")
@command
def export(
    source: str, inputs: tuple[str, ...], dims: tuple[str, ...], opset: int, strict: bool, out: Path | None
) -> None:
    """Capture SOURCE with torch.export and lower it to ONNX (no targets)."""
    from kiln.build import export_only
    from kiln.config import parse_config

    model = _model_from_flags(source, inputs, dims)
    root = Path.cwd()
    config = parse_config({"model": model, "export": {"opset": opset, "strict": strict}}, root, where="kiln export")
    out_root = out.parent if out else Path("build")
    if out is not None:
        config = config.model_copy(update={"model": config.model.model_copy(update={"name": out.name})})
    folder = export_only(config, out_root)
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

    from kiln.summary import wide_console
    from kiln.targets import REGISTRY, availability

    table = Table(title="kiln targets")
    for col in ("target", "precisions", "build", "run", "needs / why not", "extra"):
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
            escape("; ".join([avail.reason or spec.summary, *extra_needs])),
            escape(", ".join(f"kiln[{e}]" for e in extras)) if extras else "-",
        )
    wide_console().print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the fingerprint as JSON.")
def doctor(as_json: bool) -> None:
    """This machine: CPU model and flags, cores, memory, GPUs, OS and toolchain versions."""
    import json

    from kiln.hardware import fingerprint

    fp = fingerprint()
    if as_json:
        click.echo(json.dumps(fp.model_dump(mode="json"), indent=2))
        return
    flags = ", ".join(f for f, on in fp.flags.items() if on) or "none of note"
    gpus = "; ".join(f"{g.name} (driver {g.driver})" for g in fp.gpus) or "none"
    click.echo(f"cpu:       {fp.cpu} ({fp.arch})")
    click.echo(f"flags:     {flags}")
    click.echo(f"cores:     {fp.physical_cores} physical, {fp.logical_cores} logical")
    click.echo(f"memory:    {fp.memory_gib} GiB")
    click.echo(f"gpu:       {gpus}")
    click.echo(f"os:        {fp.os}, Python {fp.python}")
    for dist, ver in fp.toolchain.items():
        click.echo(f"{dist + ':':<11}{ver}")
    click.echo(f"fingerprint: {fp.id}")


def _batches(value: str | None, flag: str = "--batch") -> list[int] | None:
    if not value:
        return None
    try:
        batches = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise ConfigError(f"{flag} {value!r}: expected positive sizes separated by commas, e.g. 1,8,32")
    return batches


@main.command()
@click.argument("source", metavar="CONFIG.toml|build/<model>", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--target",
    "-t",
    "targets",
    multiple=True,
    metavar="NAME[:PRECISION]",
    help="Only these targets (eager always runs).",
)
@click.option("--batch", "batch", metavar="1,8,...", help="Batch sizes to sweep (default: [bench].batch).")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Threads for every runtime (default: [bench].threads, else physical cores).",
)
@click.option(
    "--mode",
    type=click.Choice(["latency", "throughput"]),
    help="One request at a time, or the runtime's own concurrency.",
)
@click.option(
    "--min-seconds", type=click.FloatRange(min=0, min_open=True), help="Timed seconds per cell, over all rounds."
)
@click.option("--min-iters", type=click.IntRange(min=1), help="Timed runs per cell, over all rounds.")
@click.option("--warmup-seconds", type=click.FloatRange(min=0), help="Warm-up seconds per cell and round.")
@click.option("--rounds", type=click.IntRange(min=1), help="Interleaved rounds over the targets.")
@click.option(
    "--prompt-tokens",
    metavar="32,128,...",
    help="Causal LMs: prompt lengths to time the first token after (default: [bench].prompt_tokens, else 32,128).",
)
@click.option(
    "--new-tokens", type=click.IntRange(min=2), help="Causal LMs: tokens decoded per generation (default 64)."
)
@click.option(
    "--generations", type=click.IntRange(min=1), help="Causal LMs: timed generations per prompt length (default 5)."
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("build"),
    show_default=True,
    help="Build folder, as for kiln build.",
)
@click.option("--report-dir", type=click.Path(path_type=Path), help="Where the reports go (default: OUT/<model>/).")
@click.option(
    "--refresh-peak", is_flag=True, help="Re-measure the machine's peak (and bandwidth) instead of using the cache."
)
@command
def bench(
    source: Path,
    targets: tuple[str, ...],
    batch: str | None,
    threads: int | None,
    mode: str | None,
    min_seconds: float | None,
    min_iters: int | None,
    warmup_seconds: float | None,
    rounds: int | None,
    prompt_tokens: str | None,
    new_tokens: int | None,
    generations: int | None,
    out: Path,
    report_dir: Path | None,
    refresh_peak: bool,
) -> None:
    """Measure every artifact of a model beside eager, with one harness; write results.json,
    report.md and report.html. Builds missing or stale artifacts first."""
    from kiln.bench.run import BenchRun
    from kiln.bench.run import bench as run_bench
    from kiln.config import BenchSettings
    from kiln.report.console import print_results

    flags = {
        "batches": _batches(batch, "--batch"),
        "threads": threads,
        "mode": mode,
        "min_seconds": min_seconds,
        "min_iters": min_iters,
        "warmup_seconds": warmup_seconds,
        "rounds": rounds,
        "prompt_tokens": _batches(prompt_tokens, "--prompt-tokens"),
        "new_tokens": new_tokens,
        "generations": generations,
    }
    # Only the flags given are set, so only they override the config's [bench] values.
    overrides = BenchSettings(**{name: value for name, value in flags.items() if value is not None})
    run = BenchRun(
        targets=tuple(targets), overrides=overrides, out=out, report_dir=report_dir, refresh_peak=refresh_peak
    )
    with _console().status("starting") as status:
        results, folder = run_bench(source, run, progress=lambda msg: status.update(msg))
    print_results(results)
    click.echo(f"reports: {folder / 'results.json'}, {folder / 'report.md'}, {folder / 'report.html'}")


@main.command()
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--max-regression", default="10%", show_default=True, help="Allowed loss per cell, e.g. 10% or 0.1.")
@click.option("--allow-different-hardware", is_flag=True, help="Compare results from different machines anyway.")
@click.option(
    "--portable-only",
    is_flag=True,
    help="Gate only what does not depend on the machine (size, accuracy, failures); show speed and memory.",
)
@command
def compare(old: Path, new: Path, max_regression: str, allow_different_hardware: bool, portable_only: bool) -> None:
    """Per-cell deltas between two results.json; exit 4 on a regression beyond the threshold."""
    from kiln.report import load_results
    from kiln.report.compare import compare_results, parse_threshold, print_comparison

    before, after = load_results(old), load_results(new)
    comparison = compare_results(
        before, after, parse_threshold(max_regression), allow_different_hardware, portable_only
    )
    print_comparison(comparison)
    comparison.raise_on_regression()


def _thread_list(value: str | None) -> tuple[int, ...]:
    sizes = _batches(value, "--threads")
    return tuple(sizes) if sizes else ()


@main.command()
@click.argument("config_path", metavar="CONFIG.toml", type=click.Path(path_type=Path))
@click.option(
    "--objective",
    type=click.Choice(["latency", "throughput"]),
    default="latency",
    show_default=True,
    help="Minimise p50 latency (one request at a time), or maximise items/s (the runtime's own concurrency).",
)
@click.option(
    "--max-metric-drop",
    type=click.FloatRange(min=0),
    help="The accuracy budget: the largest drop of the evaluation metric a candidate may have "
    "(default: [gates].max_metric_drop).",
)
@click.option(
    "--batch", type=click.IntRange(min=1), help="The batch size to tune for (default: the first of [bench].batch)."
)
@click.option("--threads", metavar="1,2,...", help="Thread counts to try (default: 1 to the physical cores).")
@click.option(
    "--budget-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Stop starting builds and runs after this long; what was not tried is listed.",
)
@click.option(
    "--target",
    "-t",
    "targets",
    multiple=True,
    metavar="NAME[:PRECISION]",
    help="Search only these targets (repeatable; a target's fp32 is always built to rank it).",
)
@click.option("--max-builds", type=click.IntRange(min=1), help="At most this many artifacts (eager included).")
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), default=Path("build"), show_default=True, help="Build folder."
)
@click.option(
    "--write-config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the winner as a kiln.toml (one [[target]], its threads in [bench]) that kiln build reproduces.",
)
@command
def tune(
    config_path: Path,
    objective: str,
    max_metric_drop: float | None,
    batch: int | None,
    threads: str | None,
    budget_minutes: float,
    targets: tuple[str, ...],
    max_builds: int | None,
    out: Path,
    write_config: Path | None,
) -> None:
    """Search targets x precisions x quantizer options x threads for the fastest artifact within
    an accuracy budget: every candidate built, gated and timed beside eager; prints the Pareto
    front and the winner, writes OUT/<model>/tune/tune.json and tune.html."""
    from kiln.tune.output import print_results
    from kiln.tune.output import write_config as write_winner
    from kiln.tune.search import tune as run_tune
    from kiln.tune.session import TuneSettings

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out or remove the file")
    settings = TuneSettings(
        objective=objective,  # type: ignore[arg-type]
        max_metric_drop=max_metric_drop,
        batch=batch,
        threads=_thread_list(threads),
        targets=tuple(targets),
        budget_minutes=budget_minutes,
        max_builds=max_builds,
        out=out,
    )
    with _console().status("starting") as status:
        results, folder = run_tune(config_path, settings, progress=lambda msg: status.update(msg))
    print_results(results, folder)
    if write_config is not None:
        from kiln.config import load_config

        config = load_config(config_path)
        if max_metric_drop is not None:
            config = config.model_copy(
                update={"gates": config.gates.model_copy(update={"max_metric_drop": max_metric_drop})}
            )
        exact = write_winner(config, results, write_config, out)
        how = (
            "its cache key matches the winner's"
            if exact
            else "its paths are rewritten for its folder, so its cache key differs"
        )
        click.echo(f"wrote {write_config}: kiln build {write_config} reproduces {results.winner} ({how})")
    if results.winner is None:
        raise ConfigError(
            "no candidate passed its gate and was measured; widen --max-metric-drop or --budget-minutes and run again"
        )


@main.command()
@click.argument("results_path", metavar="results.json", type=click.Path(path_type=Path))
@click.option("--html/--no-html", default=True, show_default=True, help="Also write report.html.")
@command
def report(results_path: Path, html: bool) -> None:
    """Re-render report.md (and report.html) beside a results.json."""
    from kiln.report import load_results, write_reports

    written = write_reports(load_results(results_path), results_path.parent, html=html, with_results=False)
    click.echo("wrote " + ", ".join(str(p) for p in written))


@main.command()
@click.argument("artifact", metavar="build/<model>/<target-dir>", type=click.Path(path_type=Path, exists=True))
@click.option("--prompt", "-p", required=True, help="The text to continue.")
@click.option("--max-new-tokens", "-n", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0 decodes greedily.")
@click.option("--top-k", type=click.IntRange(min=1), help="Sample from the k likeliest tokens (with --temperature).")
@click.option("--seed", type=int, help="Seed of the sampler, for a repeatable sample.")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: the runtime's own).")
@command
def generate(
    artifact: Path,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int | None,
    threads: int | None,
) -> None:
    """Stream text from a built causal-LM artifact, through the decoding loop every target shares."""
    import time

    from kiln.decoding import Sampling, Tokenizer, session_for, stream_text
    from kiln.decoding import generate as decode
    from kiln.manifest import Manifest
    from kiln.targets import get_target
    from kiln.targets.base import Artifact, RunOptions

    manifest = Manifest.read(artifact)
    sig = manifest.signature
    if not sig.generative:
        raise ConfigError(
            f"{artifact} is a {manifest.model} artifact without a KV cache (not a text-generation model); "
            "kiln generate needs a causal LM built with task text-generation"
        )
    tokenizer = Tokenizer(artifact / "tokenizer")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ConfigError("the prompt encodes to no tokens; give some text")
    if len(ids) + max_new_tokens > sig.context_length():
        raise ConfigError(
            f"the prompt ({len(ids)} tokens) and --max-new-tokens {max_new_tokens} exceed this artifact's context "
            f"of {sig.context_length()} tokens; shorten one, or rebuild with a larger [model].dims.past"
        )
    impl = get_target(manifest.target, need_run=True)
    runner = impl.load(Artifact.from_manifest(artifact, manifest), RunOptions(threads=threads))
    sampling = Sampling(temperature=temperature, top_k=top_k, seed=seed)
    with runner:
        session = session_for(runner, sig)
        start = time.perf_counter()
        stamps: list[float] = []

        def timed() -> Any:
            for token in decode(session, ids, max_new_tokens, sampling, eos=tokenizer.eos):
                stamps.append(time.perf_counter() - start)
                yield token

        click.echo(prompt, nl=False)
        for piece in stream_text(tokenizer, timed()):
            click.echo(piece, nl=False)
            sys.stdout.flush()
        session.close()
    click.echo("")
    count, first = len(stamps), stamps[0] if stamps else 0.0
    rate = (count - 1) / (stamps[-1] - first) if count > 1 and stamps[-1] > first else 0.0
    click.echo(
        f"kiln: {manifest.target}:{manifest.precision}: {count} tokens, the first after {1000 * first:.0f} ms, "
        f"then {rate:.1f} tokens/s",
        err=True,
    )


# ---- shipping: package, verify, keygen (kiln/ship/) ----


@main.command()
@click.argument("source", metavar="build/<model>|build/<model>/<target-dir>", type=click.Path(path_type=Path))
@click.option(
    "--target",
    "-t",
    "targets",
    multiple=True,
    metavar="NAME[:PRECISION[:PRUNE]]",
    help="Only these artifacts (repeatable; default: every built one).",
)
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), default=Path("dist"), show_default=True, help="Output folder."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["bundle", "model-repository"]),
    default="bundle",
    show_default=True,
    help="One .tar.gz per artifact, or a Triton / OpenVINO Model Server model repository.",
)
@click.option("--sign", "key", type=click.Path(path_type=Path), help="Sign each bundle with this Ed25519 key (PEM).")
@click.option(
    "--allow-ungated", is_flag=True, help="Also ship artifacts whose gate did not run here (the card says so)."
)
@command
def package(source: Path, targets: tuple[str, ...], out: Path, fmt: str, key: Path | None, allow_ungated: bool) -> None:
    """Write a reproducible release bundle per artifact: its files, manifest.json, golden/,
    MODEL_CARD.md and SHA256SUMS (and <bundle>.sig with --sign)."""
    from kiln.ship.select import artifact_folders

    folders = artifact_folders(source, targets)
    if fmt == "model-repository":
        if key is not None:
            raise ConfigError("--sign applies to bundles; a model repository is a folder (sign a bundle of it)")
        from kiln.manifest import Manifest
        from kiln.ship.repository import refusal, write_model_repository

        if not targets:
            # Every built artifact by default: those these servers cannot load are skipped, named;
            # an explicit --target that they cannot load is refused (exit 2).
            kept = []
            for folder in folders:
                why = refusal(Manifest.read(folder), allow_ungated)
                if why is None:
                    kept.append(folder)
                else:
                    click.echo(f"skipped {folder.name}: {why}", err=True)
            if not kept:
                raise ConfigError(
                    f"{source}: no artifact a Triton or OVMS model repository can hold; build onnxruntime or openvino"
                )
            folders = kept
        for written in write_model_repository(folders, out, allow_ungated=allow_ungated):
            click.echo(f"wrote {written}")
        return
    from kiln.ship.bundle import PackageOptions
    from kiln.ship.bundle import package as write_bundle

    options = PackageOptions(out=out, sign=key, allow_ungated=allow_ungated)
    for folder in folders:
        done = write_bundle(folder, options)
        state = "wrote" if done.changed else "unchanged"
        click.echo(f"{state} {done.bundle}" + (f" (signed: {done.signature.name})" if done.signature else ""))


@main.command()
@click.argument("bundle", metavar="BUNDLE.tar.gz|build/<model>/<target-dir>", type=click.Path(path_type=Path))
@click.option(
    "--run", is_flag=True, help="Load the artifact here and replay its golden set under the gate's tolerance."
)
@click.option("--pubkey", type=click.Path(path_type=Path), help="Require <bundle>.sig to verify with this public key.")
@click.option("--extract", type=click.Path(path_type=Path), help="Keep the verified artifact in this folder.")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads for --run (default: the runtime's own).")
@command
def verify(bundle: Path, run: bool, pubkey: Path | None, extract: Path | None, threads: int | None) -> None:
    """On the machine that will run it: signature, safe extraction, checksums, manifest, runtime and
    hardware, and with --run the golden set. Exit 7 integrity, 5 cannot run here, 3 golden breach."""
    import tempfile

    from kiln.errors import ParityError
    from kiln.ship.verify import verify as run_verify

    if not bundle.exists():
        raise ConfigError(f"{bundle} does not exist; pass a bundle kiln package wrote, or an artifact folder")
    with tempfile.TemporaryDirectory(prefix="kiln-verify-") as scratch:
        done = run_verify(bundle, extract or Path(scratch), run=run, pubkey=pubkey, threads=threads)
        for line in done.checks:
            click.echo(f"ok: {line}")
        for breach in done.breaches:
            click.echo(f"kiln: gate: {done.manifest.key}: {breach}", err=True)
        if done.breaches:
            sys.exit(ParityError.exit_code)
    where = f"; the artifact is in {done.folder}" if extract else ""
    click.echo(f"verified {bundle.name} ({done.manifest.target}:{done.manifest.precision}){where}")


@main.command()
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    help="A folder, or a path prefix (default: ./kiln-signing): writes PREFIX.pem (private, 0600) and PREFIX.pub.",
)
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@command
def keygen(out: Path | None, force: bool) -> None:
    """Make an Ed25519 key pair for kiln package --sign and kiln verify --pubkey."""
    from kiln.ship.keys import keygen as make_keys

    private, public = make_keys(out, force=force)
    click.echo(f"wrote {private} (private: keep it secret) and {public} (give this to verifiers)")


# ---- serving: serve (kiln/serve/) ----


@main.command()
@click.argument("artifact", metavar="BUNDLE|build/<model>/<target-dir>", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option("--max-batch", type=click.IntRange(min=1), help="Most rows per batch (default: the batch dim's max).")
@click.option(
    "--max-delay-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="How long the oldest request waits for others to share its batch; 0 turns batching off.",
)
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: the runtime's own).")
@click.option("--name", help="Model name in the URLs (default: the manifest's model).")
@click.option(
    "--max-queue", type=click.IntRange(min=1), default=256, show_default=True, help="Waiting requests before 503."
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=64.0,
    show_default=True,
    help="Largest request body (413 above it).",
)
@click.option("--pubkey", type=click.Path(path_type=Path), help="Check a bundle's Ed25519 signature with this key.")
@command
def serve(
    artifact: Path,
    host: str,
    port: int,
    max_batch: int | None,
    max_delay_ms: float,
    threads: int | None,
    name: str | None,
    max_queue: int,
    max_body_mb: float,
    pubkey: Path | None,
) -> None:
    """Serve an artifact over the Open Inference Protocol (KServe v2 REST, as Triton and OVMS speak
    it), with dynamic batching and Prometheus metrics at /metrics."""
    from kiln.serve.server import ServeSettings
    from kiln.serve.server import serve as run_server

    settings = ServeSettings(
        host=host,
        port=port,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        threads=threads,
        name=name,
        max_queue=max_queue,
        max_body_mb=max_body_mb,
        pubkey=pubkey,
        verbose=os.environ.get("KILN_VERBOSE") == "1",
    )
    run_server(artifact, settings, say=lambda line: click.echo(line, err=True))


# ---- the fleet: fleet, node (kiln/fleet/) ----


@main.command()
@click.argument("suite", metavar="SUITE.toml", type=click.Path(path_type=Path))
@click.option(
    "--address",
    default="local",
    show_default=True,
    help="local (an in-process cluster of this machine), auto (the running cluster), host:port or ray://host:port.",
)
@click.option("--store", help="The shared store: a folder, a shared filesystem path or an fsspec URL (s3://bucket/p).")
@click.option(
    "--out", "-o", type=click.Path(path_type=Path), default=Path("build/fleet"), show_default=True, help="Reports."
)
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="CPUs of the in-process cluster (default: all).")
@click.option("--only", multiple=True, metavar="MODEL", help="Only this model of the suite (repeatable).")
@click.option("--rebench", is_flag=True, help="Measure again what the store has measured already.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True, help="Re-runs of a dead worker.")
@click.option(
    "--pending-timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Seconds a ready task may wait for a node before it is reported skipped.",
)
@command
def fleet(
    suite: Path,
    address: str,
    store: str | None,
    out: Path,
    jobs: int | None,
    only: tuple[str, ...],
    rebench: bool,
    retries: int,
    pending_timeout: float,
) -> None:
    """Build and benchmark a suite's models x targets as Ray tasks, on every kind of hardware in the
    cluster, through one content-addressed store; write OUT/results.json and OUT/report.md."""
    from kiln.fleet.runner import FleetOptions, run_fleet

    options = FleetOptions(
        suite=suite,
        address=address,
        store=store,
        out=out,
        jobs=jobs,
        only=only,
        rebench=rebench,
        retries=retries,
        pending_timeout=pending_timeout,
        verbose=os.environ.get("KILN_VERBOSE") == "1",
    )
    done = run_fleet(options, progress=lambda line: click.echo(f"kiln: {line}", err=True))
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


if __name__ == "__main__":
    main()
