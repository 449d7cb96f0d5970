"""``kiln bench``, ``compare``, ``tune``, ``report``, ``generate``: measure artifacts and gate on the figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kiln.cli import options
from kiln.cli.base import _console, command, main
from kiln.cli.options import Group, sizes
from kiln.errors import ConfigError

if TYPE_CHECKING:
    from kiln.api import BenchRun, GenerateSettings
    from kiln.tune.session import TuneSettings


def _bench_run(
    targets: tuple[str, ...], out: Path, report_dir: Path | None, refresh_peak: bool, **flags: Any
) -> BenchRun:
    """``kiln bench``'s flags as the API's settings: only the flags given override [bench]."""
    from kiln.api import BenchRun, BenchSettings

    flags["batches"] = sizes(flags.pop("batch"), "--batch")
    flags["prompt_tokens"] = sizes(flags["prompt_tokens"], "--prompt-tokens")
    overrides = BenchSettings(**{name: value for name, value in flags.items() if value is not None})
    return BenchRun(targets=targets, overrides=overrides, out=out, report_dir=report_dir, refresh_peak=refresh_peak)


_BENCH_RUN = Group(
    "run",
    [
        options.targets("Only these targets (eager always runs)."),
        click.Option(["--batch"], metavar="1,8,...", help="Batch sizes to sweep (default: [bench].batch)."),
        options.threads("Threads for every runtime (default: [bench].threads, else physical cores)."),
        click.Option(
            ["--mode"],
            type=click.Choice(["latency", "throughput"]),
            help="One request at a time, or the runtime's own concurrency.",
        ),
        click.Option(
            ["--min-seconds"],
            type=click.FloatRange(min=0, min_open=True),
            help="Timed seconds per cell, over all rounds.",
        ),
        click.Option(["--min-iters"], type=click.IntRange(min=1), help="Timed runs per cell, over all rounds."),
        click.Option(["--warmup-seconds"], type=click.FloatRange(min=0), help="Warm-up seconds per cell and round."),
        click.Option(["--rounds"], type=click.IntRange(min=1), help="Interleaved rounds over the targets."),
        click.Option(
            ["--max-rounds"], type=click.IntRange(min=1), help="At most this many rounds for a wide interval."
        ),
        click.Option(
            ["--max-seconds"],
            type=click.FloatRange(min=0, min_open=True),
            help="No more adaptive rounds once a batch's rounds have run this long.",
        ),
        click.Option(
            ["--max-round-steal"],
            type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
            help="Drop and re-time a round in which the hypervisor took more than this share of the CPUs (steal).",
        ),
        click.Option(
            ["--processes"],
            type=click.IntRange(min=1),
            help="Spread each cell's rounds over this many fresh worker processes "
            "(per-process luck goes into the interval).",
        ),
        click.Option(
            ["--malloc"],
            type=click.Choice(["system", "steady"]),
            help="glibc's malloc in every worker: as it starts, or its thresholds pinned so memory is reused (README).",
        ),
        click.Option(
            ["--prompt-tokens"],
            metavar="32,128,...",
            help="Causal LMs: prompt lengths to time the first token after "
            "(default: [bench].prompt_tokens, else 32,128).",
        ),
        click.Option(
            ["--new-tokens"], type=click.IntRange(min=2), help="Causal LMs: tokens decoded per generation (default 64)."
        ),
        click.Option(
            ["--generations"],
            type=click.IntRange(min=1),
            help="Causal LMs: timed generations per prompt length (default 5).",
        ),
        click.Option(
            ["--profile"],
            is_flag=True,
            default=None,
            help="After the timed rounds, profile each artifact with its runtime's profiler: "
            "time by operator kind and precision, reorders, the share left in fp32.",
        ),
        options.out(Path("build"), "Build folder, as for kiln build."),
        click.Option(
            ["--report-dir"], type=click.Path(path_type=Path), help="Where the reports go (default: OUT/<model>/)."
        ),
        click.Option(
            ["--refresh-peak"],
            is_flag=True,
            help="Re-measure the machine's peak (and bandwidth) instead of using the cache.",
        ),
    ],
    _bench_run,
)


@main.command()
@click.argument("source", metavar="CONFIG.toml|build/<model>", type=click.Path(path_type=Path, exists=True))
@command
@_BENCH_RUN
def bench(source: Path, run: BenchRun) -> None:
    """Measure every artifact of a model beside eager, with one harness; write results.json,
    report.md and report.html. Builds missing or stale artifacts first."""
    from kiln.api import benchmark
    from kiln.report.console import print_results

    with _console().status("starting") as status:
        done = benchmark(source, run, progress=lambda msg: status.update(msg))
    print_results(done.results)
    click.echo("reports: " + ", ".join(str(path) for path in done.reports))


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


def _tune_settings(threads: str | None, targets: tuple[str, ...], **flags: Any) -> TuneSettings:
    from kiln.tune.session import TuneSettings

    return TuneSettings(threads=tuple(sizes(threads, "--threads") or ()), targets=targets, **flags)


_TUNE_SETTINGS = Group(
    "settings",
    [
        click.Option(
            ["--objective"],
            type=click.Choice(["latency", "throughput"]),
            default="latency",
            show_default=True,
            help="Minimise p50 latency (one request at a time), or maximise items/s (the runtime's own concurrency).",
        ),
        click.Option(
            ["--max-metric-drop"],
            type=click.FloatRange(min=0),
            help="The accuracy budget: the largest drop of the evaluation metric a candidate may have "
            "(default: [gates].max_metric_drop).",
        ),
        click.Option(
            ["--batch"],
            type=click.IntRange(min=1),
            help="The batch size to tune for (default: the first of [bench].batch).",
        ),
        # A list of counts to try, unlike the other commands' --threads (one count).
        click.Option(["--threads"], metavar="1,2,...", help="Thread counts to try (default: 1 to the physical cores)."),
        click.Option(
            ["--budget-minutes"],
            type=click.FloatRange(min=0, min_open=True),
            default=30.0,
            show_default=True,
            help="Stop starting builds and runs after this long; what was not tried is listed.",
        ),
        options.targets("Search only these targets (repeatable; a target's fp32 is always built to rank it)."),
        click.Option(
            ["--max-builds"], type=click.IntRange(min=1), help="At most this many artifacts (eager included)."
        ),
        options.out(Path("build"), "Build folder."),
    ],
    _tune_settings,
)


@main.command()
@click.argument("config_path", metavar="CONFIG.toml", type=click.Path(path_type=Path))
@command
@_TUNE_SETTINGS
@click.option(
    "--write-config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the winner as a kiln.toml (one [[target]], its threads in [bench]) that kiln build reproduces.",
)
def tune(config_path: Path, settings: TuneSettings, write_config: Path | None) -> None:
    """Search targets x precisions x quantizer options x threads for the fastest artifact within
    an accuracy budget: every candidate built, gated and timed beside eager; prints the Pareto
    front and the winner, writes OUT/<model>/tune/tune.json and tune.html."""
    from kiln.tune.output import print_results
    from kiln.tune.output import write_config as write_winner
    from kiln.tune.search import tune as run_tune

    out, max_metric_drop = settings.out, settings.max_metric_drop
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out or remove the file")
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


def _generate_settings(**flags: Any) -> GenerateSettings:
    from kiln.api import GenerateSettings

    return GenerateSettings(**flags)


_GENERATE_SETTINGS = Group(
    "settings",
    [
        click.Option(["--max-new-tokens", "-n"], type=click.IntRange(min=1), default=64, show_default=True),
        click.Option(
            ["--temperature"], type=click.FloatRange(min=0), default=0.0, show_default=True, help="0 decodes greedily."
        ),
        click.Option(
            ["--top-k"], type=click.IntRange(min=1), help="Sample from the k likeliest tokens (with --temperature)."
        ),
        click.Option(["--seed"], type=int, help="Seed of the sampler, for a repeatable sample."),
        options.threads("Runtime threads (default: the runtime's own)."),
        click.Option(
            ["--chat"], is_flag=True, help="Send the prompt as a user message through the tokenizer's chat template."
        ),
        click.Option(["--system"], metavar="TEXT", help="A system message before the prompt (with --chat)."),
    ],
    _generate_settings,
)


@main.command()
@click.argument("artifact", metavar="build/<model>/<target-dir>", type=click.Path(path_type=Path, exists=True))
@click.option("--prompt", "-p", required=True, help="The text to continue (with --chat, the user's message).")
@command
@_GENERATE_SETTINGS
def generate(artifact: Path, prompt: str, settings: GenerateSettings) -> None:
    """Stream text from a built causal-LM artifact, through the decoding loop every target shares
    (with --chat, the reply to the prompt as a user message)."""
    from kiln.api import generate as continue_text

    shown: list[str] = []
    lead = "" if settings.chat else prompt  # a reply is shown alone; a continuation after its prompt

    def show(piece: str) -> None:
        if not shown:  # the prompt once decoding has begun, so that an error line comes alone
            click.echo(lead, nl=False)
        shown.append(piece)
        click.echo(piece, nl=False)
        sys.stdout.flush()

    def warn(line: str) -> None:
        click.echo(f"kiln: warning: {line}", err=True)

    done = continue_text(artifact, prompt, settings, on_text=show, on_warning=warn)
    click.echo("" if shown else lead)
    click.echo(
        f"kiln: {done.target}:{done.precision}: {len(done.tokens)} tokens, the first after "
        f"{1000 * done.first_token_s:.0f} ms, then {done.tokens_per_s:.1f} tokens/s",
        err=True,
    )
