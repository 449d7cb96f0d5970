"""From raw cells to the figures a report shows: speed-ups, roofline fractions, model quality,
and the flags that catch wasted optimizations."""

from __future__ import annotations

from typing import Any

from kiln.bench.peak import peak_for


def _quality(manifest: dict[str, Any]) -> dict[str, Any]:
    gate = manifest.get("gate") or {}
    parity = gate.get("parity") or {}
    return {
        "parity_passed": parity.get("passed") if parity else None,
        "parity_worst": parity.get("worst") if parity else None,
        "accuracy": gate.get("evaluation"),
        "simulated": bool(gate.get("simulated", False)),
    }


def _compressed(manifest: dict[str, Any], precision: str) -> bool:
    return precision != "fp32" or bool(manifest.get("options", {}).get("prune") or manifest.get("prune"))


def enrich(
    cells: list[dict[str, Any]],
    manifests: dict[str, dict[str, Any]],
    flops: dict[str, dict[int, int]],
    peak: dict[str, Any] | None,
    cv_threshold: float,
) -> list[dict[str, Any]]:
    """Add per-cell size, quality, FLOPs, roofline fraction, speed-up vs eager and flags.

    ``flops`` maps each cell key to FLOPs per batch size (pruned variants count their own program).
    """
    by_batch: dict[int, dict[str, dict[str, Any]]] = {}
    for cell in cells:
        by_batch.setdefault(cell["batch"], {})[cell["key"]] = cell
    for cell in cells:
        manifest = manifests.get(cell["key"], {})
        execution = manifest.get("execution") or {}
        cell["size_bytes"] = manifest.get("size_bytes")
        # What the runtime reported in the worker wins over what the build recorded.
        ran_as = (cell.get("runtime") or {}).get("execution_precision")
        cell["execution_precision"] = ran_as or execution.get("execution_precision")
        cell.update(_quality(manifest))
        cell.setdefault("flags", [])
        ran = cell["status"] == "ok"
        cell["flops"] = flops.get(cell["key"], {}).get(cell["batch"])
        cell["gflops"] = cell["roofline_fraction"] = cell["speedup_vs_eager"] = None
        if not ran:
            continue
        lat = cell["latency"]
        if cell["flops"]:
            per_sample = cell["flops"] * (lat["throughput"] / cell["batch"])  # forward passes/s x FLOPs
            cell["gflops"] = per_sample / 1e9
            top = peak_for(cell["precision"], peak) if peak else None
            cell["roofline_fraction"] = cell["gflops"] / top if top else None
        eager = by_batch[cell["batch"]].get("eager-fp32")
        if eager is not None and eager["status"] == "ok":
            if cell["mode"] == "throughput":
                cell["speedup_vs_eager"] = lat["throughput"] / eager["latency"]["throughput"]
            else:
                cell["speedup_vs_eager"] = eager["latency"]["p50_ms"] / lat["p50_ms"]
        if lat["unstable"]:
            cell["flags"].append(
                f"unstable: CV {lat['cv']:.1%} is over the {cv_threshold:.0%} threshold; "
                "quiet the machine or raise --min-seconds"
            )
        if cell["execution_precision"] and cell["execution_precision"] != cell["precision"]:
            cell["flags"].append(
                f"execution precision: requested {cell['precision']}, the runtime executes "
                f"{cell['execution_precision']}"
            )
    _flag_wasted(cells, manifests)
    return cells


def _flag_wasted(cells: list[dict[str, Any]], manifests: dict[str, dict[str, Any]]) -> None:
    """A quantized or compressed artifact slower than the fp32 artifact of the same target."""
    index = {(c["target"], c["key"], c["batch"]): c for c in cells}
    for cell in cells:
        if cell["status"] != "ok" or not _compressed(manifests.get(cell["key"], {}), cell["precision"]):
            continue
        sibling = index.get((cell["target"], f"{cell['target']}-fp32", cell["batch"]))
        if sibling is None or sibling is cell or sibling["status"] != "ok":
            continue
        mine, theirs = cell["latency"], sibling["latency"]
        slower = (
            mine["throughput"] < theirs["throughput"]
            if cell["mode"] == "throughput"
            else mine["p50_ms"] > theirs["p50_ms"]
        )
        if slower:
            cell["flags"].append(
                f"wasted optimization: {cell['key']} is slower than {sibling['key']} at batch {cell['batch']} "
                f"(p50 {mine['p50_ms']:.3g} ms vs {theirs['p50_ms']:.3g} ms)"
            )
