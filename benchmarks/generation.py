"""Benchmark a causal LM's generation (``benchmarks/generation.toml``: the tinyllm example by
default) and print the table for notes: TTFT per prompt length, inter-token latency, decode
tokens/s and the fraction of the memory-bandwidth roofline, with the machine's fingerprint.

    python benchmarks/generation.py [--config path/kiln.toml] [--target onnxruntime:int4 ...]
                                    [--out build/generation] [--results benchmarks/results]
                                    [--min-seconds 1] [--table-only results.json]

``kiln bench`` does the work (building what is missing or stale); its results.json, report.md and
report.html go to ``<results>/<fingerprint>/<model>/``.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.results import Results

HERE = Path(__file__).resolve().parent


def table(results: Results) -> str:
    """The Markdown table of a generation run, with what it was measured on."""
    from kiln.report import fmt
    from kiln.report.generation import in_cache_line, prompt_lengths
    from kiln.results import MeasuredCell

    lengths = prompt_lengths(results)
    head = ["target", *[f"TTFT@{n} ms" for n in lengths], "ITL p50 ms", "ITL p99 ms", "tok/s", "vs eager"]
    head += ["roofline tok/s", "of roofline", "size", "peak RSS", "gate"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for c in results.cells:
        if not isinstance(c, MeasuredCell) or c.generation is None:
            lines.append(f"| {c.key} | {c.status}: {getattr(c, 'reason', '')} |" + " |" * (len(head) - 2))
            continue
        g, lat = c.generation, c.latency
        ttft = {p.prompt_tokens: fmt.ms(p.ttft.p50_ms) for p in g.prompts}
        values = [c.key, *[ttft.get(n, "-") for n in lengths], fmt.ms(lat.p50_ms), fmt.ms(lat.p99_ms)]
        values += [fmt.num(g.tokens_per_s), fmt.ratio(c.speedup_vs_eager)]
        values += [fmt.num(g.roofline.tokens_per_s) if g.roofline else "-"]
        values += [fmt.pct(g.roofline.fraction) if g.roofline else "-", fmt.size(c.size_bytes)]
        values += [fmt.size(c.peak_rss_bytes), g.gate or "-"]
        lines.append("| " + " | ".join(values) + " |")
    s, fp = results.settings, results.fingerprint
    bandwidth = f"{results.bandwidth.gbps:g} GB/s" if results.bandwidth else "not measured"
    load = results.machine_load
    busy = f", load average {load.load_average_before[0]}" if load and load.load_average_before else ""
    lines += [
        "",
        f"Model `{results.model}` ({results.source}); greedy, {s.new_tokens} new tokens after seeded prompts of "
        f"{', '.join(map(str, s.prompt_tokens or []))} tokens, batch 1, {s.threads} threads, "
        f">= {s.generations} generations per prompt length and >= {s.min_seconds} s per cell over {s.rounds} "
        "interleaved rounds.  ",
        f"Machine `{fp.id}`: {fp.cpu}, {fp.physical_cores} cores{busy}; memory bandwidth {bandwidth} "
        f"({results.bandwidth.method if results.bandwidth else ''}).",
    ]
    notes = {n for c in results.cells if isinstance(c, MeasuredCell) and c.generation for n in c.generation.notes}
    lines += [f"Note: {n}." for n in sorted(notes)]
    if cached := in_cache_line(results):
        lines.append(f"Note: {cached}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=Path, default=HERE / "generation.toml")
    parser.add_argument("--config", type=Path, help="a causal LM's kiln.toml (default: the settings file's)")
    parser.add_argument("--target", "-t", action="append", default=[], help="NAME[:PRECISION], repeatable")
    parser.add_argument("--out", type=Path, default=Path("build/generation"), help="build folder")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where <fingerprint>/<model>/ goes")
    parser.add_argument("--min-seconds", type=float, help="override the timed seconds per cell")
    parser.add_argument("--table-only", type=Path, metavar="results.json", help="print the table of a finished run")
    args = parser.parse_args(argv)

    from kiln.bench.run import BenchRun, bench
    from kiln.capture.sources import hf_folder
    from kiln.config import BenchSettings, load_config
    from kiln.errors import KilnError
    from kiln.report import load_results
    from kiln.targets import fingerprint

    if args.table_only:
        print(table(load_results(args.table_only)))
        return 0
    spec = tomllib.loads(args.settings.read_text())
    config = (args.config or (args.settings.parent / spec["config"])).resolve()
    given = {**spec.get("settings", {}), **({"min_seconds": args.min_seconds} if args.min_seconds else {})}
    try:
        loaded = load_config(config)
        if loaded.model.source.startswith("hf:") and not hf_folder(loaded.model.source, loaded.root).is_dir():
            raise SystemExit(
                f"{loaded.model.source} (from {config}) is not there yet; for tinyllm run "
                "`python examples/tinyllm/train.py` first"
            )
        run = BenchRun(
            targets=tuple(args.target),
            overrides=BenchSettings.model_validate(given),
            out=args.out,
            report_dir=args.results / fingerprint().id / loaded.model.name,
        )
        results, folder = bench(config, run, progress=lambda msg: print(f"   {msg}", file=sys.stderr, flush=True))
    except KilnError as err:
        print(f"kiln: error: {err}", file=sys.stderr)
        return 1
    print(table(results))
    print(f"\nreports: {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
