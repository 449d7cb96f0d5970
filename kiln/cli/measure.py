"""``kiln bench``, ``compare``, ``tune``, ``report``, ``generate``: measure artifacts and gate on the figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kiln.cli.base import _batches, _console, command, main
from kiln.errors import ConfigError


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
@click.option("--max-rounds", type=click.IntRange(min=1), help="At most this many rounds for a wide interval.")
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="No more adaptive rounds once a batch's rounds have run this long.",
)
@click.option(
    "--max-round-steal",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    help="Drop and re-time a round in which the hypervisor took more than this share of the CPUs (steal).",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    help="Spread each cell's rounds over this many fresh worker processes (per-process luck goes into the interval).",
)
@click.option(
    "--malloc",
    type=click.Choice(["system", "steady"]),
    help="glibc's malloc in every worker: as it starts, or its thresholds pinned so memory is reused (README).",
)
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
    max_rounds: int | None,
    max_seconds: float | None,
    max_round_steal: float | None,
    processes: int | None,
    malloc: str | None,
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
        "max_rounds": max_rounds,
        "max_seconds": max_seconds,
        "max_round_steal": max_round_steal,
        "processes": processes,
        "malloc": malloc,
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

    from kiln.decoding import Sampling, Tokenizer, check_context, session_for, stream_text
    from kiln.decoding import generate as decode
    from kiln.manifest import Manifest
    from kiln.targets import loader
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
    check_context(len(ids), max_new_tokens, sig.context_length())
    impl = loader(manifest)
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
