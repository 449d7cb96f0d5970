"""optimum-intel's OpenVINO IR of a causal LM, judged by kiln's generation gate, beside kiln's artifacts.

    python benchmarks/peers/optimum_accuracy.py --eager build/smollm2/eager-fp32 \\
        --peer int4-defaults=/tmp/ov-int4 [--kiln build/smollm2/openvino-int4 ...] --out result.json

Runs in kiln's venv (kiln's openvino opens the peer's IR; optimum-intel is not needed). Every
folder is measured by :func:`kiln.gate.verdict.measure` against the same eager answers, under
kiln's tolerance for its precision (int4: ``kiln.targets.INT4``), so the figures are the gate's
own: teacher-forced top-1, held-out perplexity change, per-step logits cosine, free-running tokens.

The eager answers are the gate's, rebuilt from kiln's eager artifact of the model (``--eager``):
its manifest holds the gate's prompts (ids) and eager's greedy tokens, its golden set the held-out
ids and eager's perplexity on them; eager's teacher-forced logits are computed again on that
artifact (the golden set keeps at most 2 MiB, one SmolLM2 prompt). The recomputation is checked:
eager's greedy tokens must equal the manifest's, and the logits of the golden prompts and the
held-out perplexity are compared with the stored ones (the JSON's ``reference`` block).

The peer's IR (inputs ``input_ids``, ``attention_mask``, ``position_ids``, ``beam_idx``; the KV
cache in the request's state) is compiled with kiln's own ``compile_model`` for the precision given
(``--precision`` or the ``PRECISION:`` of ``--peer``, default int4: ``INFERENCE_PRECISION_HINT=f32``,
``KV_CACHE_PRECISION=f32``, ``PERFORMANCE_HINT=LATENCY``, ``NUM_STREAMS=1``,
``INFERENCE_NUM_THREADS=--threads``), so it runs under exactly the settings kiln's runner gives
kiln's artifact of that precision, and is judged under kiln's tolerance for it (``kiln.targets``'
INT4, FP32, ...). Each kiln artifact (``--kiln``) is opened the way ``kiln verify --run`` opens it
and judged under its own gate's tolerance; its manifest's gate figures (``gate.generation``) are
copied beside the ones measured here.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kiln.decoding import DecodeSession, forced, generate, perplexity
from kiln.gate.golden import GoldenSet
from kiln.gate.verdict import EagerGeneration, GenerationCase, Heldout, measure
from kiln.manifest import Manifest
from kiln.spec import Signature
from kiln.targets import rows
from kiln.targets.base import RunOptions
from kiln.targets.opening import open_session

TOLERANCES = {"int4": rows.INT4, "int8-weights": rows.INT8_WEIGHTS, "int8": rows.INT8, "fp32": rows.FP32}
IR = "openvino_model.xml"


class OptimumSession(DecodeSession):
    """optimum-intel's stateful IR as a kiln decode session: batch 1, the cache in the request."""

    def __init__(self, compiled: Any, sig: Signature) -> None:
        super().__init__(sig)
        self.request = compiled.create_infer_request()
        self.logits = compiled.output("logits")
        self.beam = np.zeros(1, dtype=np.int32)
        self._reset()

    def _reset(self) -> None:
        self.request.reset_state()

    def _step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        past = int(positions[0, 0])  # the session feeds positions past .. past + n - 1
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones((1, past + ids.shape[1]), dtype=np.int64),
            "position_ids": positions,
            "beam_idx": self.beam,
        }
        result = self.request.infer(feed, share_inputs=True)
        return np.array(result[self.logits])  # [1, n, vocab]: every fed position's logits

    def close(self) -> None:
        self.request = None


def eager_reference(folder: Path, threads: int) -> tuple[EagerGeneration, dict[str, Any]]:
    """The gate's prompts and eager's answers, from kiln's eager artifact (see the module doc)."""
    manifest = Manifest.read(folder)
    gen = manifest.gate.generation
    if gen is None:
        sys.exit(f"{folder}'s manifest has no gate.generation: give kiln's eager artifact of a causal LM")
    golden = GoldenSet.read(folder)
    stored = golden.eager_generation()
    session = open_session(folder, RunOptions(threads=threads))
    cases, checks = [], []
    try:
        for i, p in enumerate(gen.per_prompt):
            tokens = list(generate(session, p.prompt_ids, len(p.eager_tokens)))
            if tokens != p.eager_tokens:
                sys.exit(f"eager's greedy tokens for prompt {i} differ from the manifest's: the reference moved")
            logits = forced(session, p.prompt_ids, p.eager_tokens)
            cases.append(GenerationCase(f"prompt {i}", p.prompt, list(p.prompt_ids), list(p.eager_tokens), logits))
            for case in stored.cases:
                if case.ids == list(p.prompt_ids) and case.tokens == list(p.eager_tokens):
                    checks.append({"prompt": i, "max_abs_vs_golden": float(np.abs(logits - case.logits).max())})
        ppl = perplexity(session, stored.heldout.ids)
    finally:
        session.close()
    info = {
        "eager_artifact": str(folder),
        "prompts": len(cases),
        "new_tokens": gen.new_tokens,
        "heldout_tokens": len(stored.heldout.ids),
        "perplexity_eager_gate": stored.heldout.perplexity,
        "perplexity_eager_recomputed": ppl,
        "golden_prompts_checked": checks,
        "greedy_tokens_equal_manifest": True,
    }
    return EagerGeneration(cases, Heldout(stored.heldout.ids, stored.heldout.perplexity)), info


def weights(xml: Path) -> dict[str, Any]:
    """Weight constants of an IR by element type, int4 group sizes, and nncf's rt_info."""
    import openvino as ov

    model = ov.Core().read_model(xml)
    count: collections.Counter[str] = collections.Counter()
    elements: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        shape = list(op.get_output_shape(0))
        n = int(np.prod(shape)) if shape else 1
        if n < 64:  # scalars and small shape constants, not weights
            continue
        t = op.get_output_element_type(0).get_type_name()
        count[t] += 1
        elements[t] += n
        if t in ("u4", "i4", "u8", "i8") and shape[-1] > 1:  # [.., 1]: a zero point, not a weight
            # [out, groups, group] is grouped; [out, in] is per channel
            groups[f"{t} group {shape[-1]}" if len(shape) == 3 else f"{t} per channel"] += 1
    out: dict[str, Any] = {
        "weight_constants": dict(count),
        "weight_elements": dict(elements),
        "quantized_layouts": dict(sorted(groups.items())),
    }
    for key in ("nncf", "runtime_options"):
        if model.has_rt_info([key]):
            out[key] = _plain(model.get_rt_info([key]))
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if not hasattr(v, "astype"):
        return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
    try:
        return _plain(v.astype(dict))
    except Exception:
        return v.astype(str)


def compiled_settings(compiled: Any) -> dict[str, str]:
    keys = (
        "INFERENCE_PRECISION_HINT",
        "KV_CACHE_PRECISION",
        "INFERENCE_NUM_THREADS",
        "NUM_STREAMS",
        "PERFORMANCE_HINT",
        "DYNAMIC_QUANTIZATION_GROUP_SIZE",
        "KEY_CACHE_GROUP_SIZE",
        "VALUE_CACHE_GROUP_SIZE",
    )
    out = {}
    for key in keys:
        try:
            v = compiled.get_property(key)
        except Exception:  # a key this plugin does not report
            continue
        out[key] = v.get_type_name() if hasattr(v, "get_type_name") else str(v)
    return out


def figures(result: Any) -> dict[str, Any]:
    """The gate's figures in full, per prompt without the id lists (they are the reference's)."""
    data = result.model_dump(mode="json")
    data["per_prompt"] = [
        {k: v for k, v in p.items() if k not in ("prompt_ids", "eager_tokens")} for p in data["per_prompt"]
    ]
    return data


def measure_peer(
    name: str, folder: Path, precision: str, eager: EagerGeneration, sig: Signature, a: argparse.Namespace
) -> dict:
    from kiln.targets.openvino import compile_model, execution_info

    xml = folder / IR
    if not xml.is_file():
        sys.exit(f"{folder} has no {IR}: give the folder optimum_export.py wrote")
    t0 = time.perf_counter()
    compiled = compile_model(xml, precision, RunOptions(threads=a.threads))
    session = OptimumSession(compiled, sig)
    tolerance = TOLERANCES[precision]
    try:
        result = measure(session, eager, tolerance, "generation")
    finally:
        session.close()
    peer = folder / "peer.json"
    record = json.loads(peer.read_text()) if peer.is_file() else {}
    return {
        "name": name,
        "kind": "optimum-intel",
        "folder": str(folder),
        "precision": precision,
        "tolerance": tolerance.model_dump(mode="json"),
        "command": record.get("command"),
        "quantization_config": record.get("quantization"),
        "versions": record.get("versions"),
        "weights_bytes": (folder / "openvino_model.bin").stat().st_size,
        "ir_bytes": xml.stat().st_size + (folder / "openvino_model.bin").stat().st_size,
        "compression": weights(xml),
        "compiled": compiled_settings(compiled),
        "execution": execution_info(compiled),
        "measure_s": round(time.perf_counter() - t0, 1),
        "generation": figures(result),
    }


def measure_kiln(folder: Path, eager: EagerGeneration, a: argparse.Namespace) -> dict:
    manifest = Manifest.read(folder)
    gate = manifest.gate.generation
    if gate is None:
        sys.exit(f"{folder}'s manifest has no gate.generation: give an artifact of a causal LM")
    tolerance = gate.tolerance  # the artifact's own gate's
    t0 = time.perf_counter()
    session = open_session(folder, RunOptions(threads=a.threads), manifest)
    compiled = getattr(session.runner, "compiled", None)
    try:
        result = measure(session, eager, tolerance, "generation")
    finally:
        session.close()
    bins = sorted(folder.glob("*.bin"))
    out: dict[str, Any] = {
        "name": f"kiln {manifest.target}:{manifest.precision}",
        "kind": "kiln",
        "folder": str(folder),
        "precision": manifest.precision,
        "tolerance": tolerance.model_dump(mode="json"),
        "weights_bytes": sum(b.stat().st_size for b in bins) if bins else None,
        "size_bytes": manifest.size_bytes,
        "main_file": manifest.main_file,
        "main_bytes": (folder / manifest.main_file).stat().st_size,
        "measure_s": round(time.perf_counter() - t0, 1),
        "generation": figures(result),
        "manifest_gate": figures(gate),
    }
    xml = folder / "model.xml"
    if xml.is_file():
        out["compression"] = weights(xml)
    if compiled is not None:
        out["compiled"] = compiled_settings(compiled)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eager", type=Path, required=True, help="kiln's eager artifact of the model (the reference)")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="[PRECISION:]NAME=FOLDER",
        help="an optimum-intel IR folder, compiled and judged as kiln's PRECISION (default --precision; repeatable)",
    )
    p.add_argument("--kiln", action="append", default=[], type=Path, help="a kiln artifact folder (repeatable)")
    p.add_argument(
        "--precision",
        default="int4",
        choices=sorted(TOLERANCES),
        help="kiln precision whose compile settings and gate tolerance a peer gets",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True, help="JSON to write")
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    eager, info = eager_reference(a.eager.resolve(), a.threads)
    info["reference_s"] = round(time.perf_counter() - t0, 1)
    print(f"eager reference: {info['prompts']} prompts, held-out {info['heldout_tokens']} tokens", flush=True)
    sig = Manifest.read(a.eager.resolve()).signature
    runs = []
    for spec in a.peer:
        name, _, folder = spec.partition("=")
        precision, _, bare = name.rpartition(":") if ":" in name else (a.precision, "", name)
        if not folder or precision not in TOLERANCES:
            p.error(f"--peer {spec!r}: give [PRECISION:]NAME=FOLDER, PRECISION one of {sorted(TOLERANCES)}")
        runs.append(measure_peer(bare, Path(folder).resolve(), precision, eager, sig, a))
        g = runs[-1]["generation"]
        print(f"{bare} ({precision}): top-1 {g['forced_top1']:.4f}, ppl {g['perplexity_increase']:+.2%}", flush=True)
    for folder in a.kiln:
        runs.append(measure_kiln(folder.resolve(), eager, a))
        g = runs[-1]["generation"]
        print(f"{runs[-1]['name']}: top-1 {g['forced_top1']:.4f}, ppl {g['perplexity_increase']:+.2%}", flush=True)
    import openvino

    record = {
        "tolerances": {k: v.model_dump(mode="json") for k, v in TOLERANCES.items()},
        "threads": a.threads,
        "openvino": openvino.get_version(),
        "reference": info,
        "runs": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
