"""``MODEL_CARD.md``: what a bundle holds, for the person deploying it, drawn from the manifest
(and the model's latest ``results.json``) alone, so the same artifact always gets the same card."""

from __future__ import annotations

import json
from typing import Any

from kiln.manifest import Gate, Manifest
from kiln.results import MeasuredCell, Results

SHORT = 160  # execution facts longer than this (layer tables, profiles) stay in manifest.json


def model_card(manifest: Manifest, results: Results | None = None, note: str | None = None) -> str:
    m = manifest
    title = f"{m.model} · {m.target}:{m.precision}" + (f" · pruned {m.slug}" if m.slug else "")
    lines = [f"# {title}", ""]
    if not m.gate.ran:
        lines += [f"**NOT GATED**: {m.gate.reason}. Nothing here proves this artifact matches the model.", ""]
    lines += [
        f"Built by kiln {m.kiln_version} on {m.created} from `{m.source}`; main file `{m.main_file}`, "
        f"{m.size_bytes:,} bytes. Check it on the machine that will run it: `kiln verify <bundle> --run`.",
        "",
        *_signature(m),
        *_execution(m),
        *_gate(m.gate),
        *_golden(m),
        *_provenance(m),
        "## Toolchain",
        "",
        "| package | version |",
        "|---|---|",
        *(f"| {dist} | {version} |" for dist, version in m.toolchain.items()),
        "",
        *_bench(m, results, note),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _signature(m: Manifest) -> list[str]:
    sig = m.signature
    lines = ["## Signature", "", "| input | dtype | shape |", "|---|---|---|"]
    for spec in sig.inputs:
        shape = ", ".join(str(s) for s in spec.shape)
        value_range = f" (values {spec.range[0]}..{spec.range[1]})" if spec.range else ""
        lines.append(f"| `{spec.name}` | {spec.dtype}{value_range} | [{shape}] |")
    lines.append("")
    dims = [
        f"`{name}` {d.min}..{d.max}" + (f" (opt {d.best})" if d.best not in (d.min, d.max) else "")
        for name, d in sig.dims.items()
    ]
    if dims:
        lines += ["Named dims: " + ", ".join(dims) + ".", ""]
    lines += ["Outputs: " + (", ".join(f"`{o}`" for o in sig.outputs) or "-") + ".", ""]
    if sig.cache is not None:
        c = sig.cache
        lines += [
            f"A causal LM's step graph: {c.layers} layers, KV cache {c.kv_heads} heads x {c.head_dim} ({c.dtype}), "
            f"vocabulary {c.vocab_size}, context {sig.context_length()} tokens.",
            "",
        ]
    return lines


def _execution(m: Manifest) -> list[str]:
    lines = ["## What the runtime executes", ""]
    facts: dict[str, Any] = m.execution.model_dump(mode="json")
    for key, value in facts.items():
        if value in (None, [], {}):
            continue
        fact = _fact(value)
        lines.append(f"- {key}:" + (f" {fact}" if fact else ""))
        if isinstance(value, dict) and len(_text(value)) > SHORT:
            lines += [f"  - {k}: {_fact(v)}" for k, v in value.items() if v not in (None, [], {})]
    if m.options:
        lines.append(f"- options: {json.dumps(m.options, sort_keys=True)}")
    return [*lines, ""]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _fact(value: Any) -> str:
    text = _text(value)
    if len(text) <= SHORT:
        return text
    return "" if isinstance(value, dict) else "(see manifest.json)"


GENERATION_ONLY = ("exact_tokens", "max_perplexity_increase")


def _gate(gate: Gate) -> list[str]:
    if not gate.ran:
        return ["## Parity gate", "", f"Not run: {gate.reason}.", ""]
    verdict = "passed" if gate.passed else "FAILED"
    head = f"Against eager: **{verdict}**" + (" (on a simulation of its numerics)" if gate.simulated else "")
    lines = ["## Parity gate", ""]
    if gate.parity is None:
        lines.append(head + ".")
    else:
        p = gate.parity
        limits = p.tolerance.model_dump(exclude_none=True)
        if gate.generation is None:
            limits = {k: v for k, v in limits.items() if k not in GENERATION_ONLY}
        tolerance = ", ".join(f"{k} {v}" for k, v in limits.items())
        lines += [
            f"{head} on {p.cases} cases ({p.inputs}); tolerance: {tolerance or 'none'}.",
            "",
            "| output | max abs | max rel | min cosine | top-1 |",
            "|---|---|---|---|---|",
            *(
                f"| `{name}` | {f.max_abs:.3g} | {f.max_rel:.3g} | {f.cosine:.6f} | "
                f"{'-' if f.top1 is None else f'{f.top1:.4f}'} |"
                for name, f in p.outputs.items()
            ),
        ]
    if gate.generation is not None:
        g = gate.generation
        lines += [
            "",
            f"Generation ({g.prompts} prompts x {g.new_tokens} tokens): greedy tokens "
            f"{'identical to eager' if g.exact else f'diverge from step {g.first_divergence}'}, "
            f"teacher-forced next-token agreement {g.forced_top1:.4f}, min logits cosine {g.min_cosine:.6f}, "
            f"held-out perplexity {g.perplexity:.4g} vs eager {g.perplexity_eager:.4g} ({g.perplexity_increase:+.2%}).",
        ]
    if gate.evaluation is not None:
        e = gate.evaluation
        limit = f" (allowed {e.max_drop:.4g})" if e.max_drop is not None else ""
        lines += [
            "",
            f"Task metric `{e.metric}` on {e.samples} samples: {e.value:.4f} vs eager {e.eager:.4f}, "
            f"drop {e.drop:.4g}{limit}.",
        ]
    lines += [*(f"- breach: {b}" for b in gate.breaches)]
    return [*lines, ""]


def _golden(m: Manifest) -> list[str]:
    g = m.golden
    if g is None:
        return []
    screened = "each passed the gate's tolerance on this artifact at build time" if g.screened else "not screened"
    return [
        "## Golden set",
        "",
        f"`golden/`: {g.cases} cases ({', '.join(g.kinds)}), {g.bytes:,} bytes, eager's outputs for them; "
        f"{screened}. `kiln verify --run` replays them with the gate's tolerance.",
        "",
    ]


def _provenance(m: Manifest) -> list[str]:
    lines = []
    if m.calibration is not None:
        c = m.calibration
        lines.append(f"- calibration: {c.samples} samples from `{c.source}` (sha256 {c.sha256[:16]}…)")
    if m.prune is not None:
        p = m.prune
        lines.append(
            f"- pruning: {p.method} {p.amount:.0%} ({p.importance}), {p.params_before:,} → {p.params_after:,} params"
        )
    if m.adapter is not None:
        lines.append(f"- adapter merged: `{m.adapter.path}` (sha256 {m.adapter.sha256[:16]}…)")
    if m.gguf is not None:
        lines.append(f"- source: {m.gguf.line}")
    return ["## Provenance", "", *lines, ""] if lines else []


def _bench(m: Manifest, results: Results | None, note: str | None) -> list[str]:
    if results is None:
        return ["## Benchmark", "", note, ""] if note else []
    fp = results.fingerprint
    cells = [c for c in results.cells if c.key == m.key and isinstance(c, MeasuredCell)]
    lines = [
        "## Benchmark",
        "",
        f"Measured {results.created} on `{fp.id}`: {fp.cpu}, {fp.physical_cores} cores, {fp.memory_gib} GiB"
        + (f", GPUs: {', '.join(g.name or '?' for g in fp.gpus)}" if fp.gpus else "")
        + f", {fp.os}.",
        "",
        "| batch | mode | threads | p50 ms | p99 ms | items/s | vs eager |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in sorted(cells, key=lambda c: (c.batch, c.mode)):
        speedup = "-" if c.speedup_vs_eager is None else f"{c.speedup_vs_eager:.2f}x"
        lat = c.latency
        lines.append(
            f"| {c.batch} | {c.mode} | {c.threads} | {lat.p50_ms:.3f} | {lat.p99_ms:.3f} | "
            f"{lat.throughput:,.1f} | {speedup} |"
        )
    return [*lines, ""]
