"""kiln's OpenVINO causal-LM artifacts beside optimum-intel's IR of the same model, in one run and
one harness (kiln's venv, kiln's decode loop, the same threads, prompts and pinned precisions).

    python benchmarks/peers/same_harness.py --kiln build/tinyllm/openvino-int4 --peer /tmp/opt-int4 \\
        [--threads 1] [--prompt 64] [--new 48] [--rounds 5]

The peer's IR (``optimum_export.py``, run in the peer's own venv) takes ``input_ids``,
``attention_mask``, ``position_ids`` and ``beam_idx`` and keeps its cache as state, like kiln's;
both are compiled with f32 compute and an f32 KV cache (optimum writes its own runtime options
into the IR, an f16 cache for fp32 exports: pinned here so that like is compared with like).
Rounds alternate the two, and each figure is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

PIN = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}


class PeerSession:
    """optimum-intel's stateful IR, driven the way its OVModelForCausalLM drives it."""

    def __init__(self, folder: Path, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(folder / "openvino_model.xml")
        compiled = core.compile_model(model, "CPU", {**PIN, "INFERENCE_NUM_THREADS": threads})
        self.request = compiled.create_infer_request()
        self.names = {i.get_any_name() for i in model.inputs}
        self.length = 0

    def reset(self) -> None:
        self.request.reset_state()
        self.length = 0

    def feed(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        inputs = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, self.length + n), dtype=np.int64),
            "position_ids": np.arange(self.length, self.length + n, dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32),
        }
        self.request.infer({k: v for k, v in inputs.items() if k in self.names})
        self.length += n
        return np.asarray(self.request.get_output_tensor(0).data)[0]


def kiln_session(folder: Path, threads: int):  # type: ignore[no-untyped-def]
    from kiln.decoding import session_for
    from kiln.targets import implementation
    from kiln.targets.base import Artifact, RunOptions

    artifact = Artifact.from_manifest(folder)
    runner = implementation(artifact.target).load(artifact, RunOptions(threads=threads))
    return session_for(runner, artifact.signature)


def timed(session, prompt: list[int], new: int) -> tuple[float, float, list[int]]:  # type: ignore[no-untyped-def]
    """(time to first token s, decode tokens/s, tokens): greedy, the same loop for both."""
    session.reset()
    start = time.perf_counter()
    logits = session.feed(prompt)[-1]
    tokens = [int(np.argmax(logits))]
    first = time.perf_counter() - start
    for _ in range(new - 1):
        tokens.append(int(np.argmax(session.feed([tokens[-1]])[-1])))
    total = time.perf_counter() - start
    return first, (new - 1) / (total - first), tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kiln", type=Path, required=True, help="a kiln openvino artifact folder")
    p.add_argument("--peer", type=Path, required=True, help="an optimum-intel export folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens (seeded ids)")
    p.add_argument("--new", type=int, default=48)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    sessions = {"kiln": kiln_session(args.kiln, args.threads), "optimum-intel": PeerSession(args.peer, args.threads)}
    prompt = np.random.default_rng(0).integers(4, 1000, args.prompt).tolist()
    for session in sessions.values():  # warm-up: first passes over new cache lengths are slower
        timed(session, prompt, args.new)
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in sessions}
    tokens: dict[str, list[int]] = {}
    for r in range(args.rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        for name in order:
            first, rate, tokens[name] = timed(sessions[name], prompt, args.new)
            figures[name].append((first, rate))
    out = {
        name: {
            "ttft_ms": round(1000 * statistics.median(f for f, _ in runs), 2),
            "tokens_per_s": round(statistics.median(r for _, r in runs), 1),
        }
        for name, runs in figures.items()
    }
    out["same_tokens"] = tokens["kiln"] == tokens["optimum-intel"]
    out["ratio_tokens_per_s"] = round(out["kiln"]["tokens_per_s"] / out["optimum-intel"]["tokens_per_s"], 3)
    out["settings"] = {"threads": args.threads, "prompt": args.prompt, "new": args.new, "rounds": args.rounds, **PIN}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
