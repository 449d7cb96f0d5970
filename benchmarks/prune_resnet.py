"""Channel pruning 30 % on a ResNet-18-style CNN: FLOPs and latency beside the dense model on
every CPU target (eager, aoti, onnxruntime, openvino), timed with kiln's one bench harness.

    python benchmarks/prune_resnet.py [--out /tmp/prune-resnet] [--size 224] [--min-seconds 3] [--rounds 3]

Writes a kiln.toml into ``--out`` whose targets are each CPU target dense and with
``prune = { method = "channel", amount = 0.3 }`` (no recovery: latency only; the weights are
seeded, not trained), runs ``kiln bench`` on it (each artifact in its own worker process,
interleaved rounds), and prints per target: FLOPs dense -> pruned, p50 latency dense -> pruned,
and the speed-up, all from that one run. ``results.json`` and ``report.md`` stay in the folder.
This file is also the model source the config points at (``prune_resnet.py:build``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from kiln.results import Results

TARGETS = ("eager", "aoti", "onnxruntime", "openvino")
AMOUNT = 0.3


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18's layout (2-2-2-2 basic blocks, 64 -> 512 channels) for 1,000 classes."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build() -> nn.Module:
    """Seeded weights with non-trivial BatchNorm statistics (latency does not need training)."""
    torch.manual_seed(0)
    model = ResNet18()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.2, 1.0)
    return model.eval()


def write_config(out: Path, size: int, min_seconds: float, rounds: int) -> Path:
    lines = [
        "[model]",
        'name = "resnet18"',
        f"source = {json.dumps(f'{Path(__file__).resolve()}:build')}",
        f'inputs = [{{ name = "x", shape = ["batch", 3, {size}, {size}] }}]',
        "dims = { batch = { min = 1, opt = 1, max = 8 } }",
        "",
        "[bench]",
        "batch = [1]",
        "threads = 2",
        f"min_seconds = {min_seconds}",
        f"rounds = {rounds}",
    ]
    for name in TARGETS:
        lines += ["", "[[target]]", f'name = "{name}"', "", "[[target]]", f'name = "{name}"']
        lines.append(f'prune = {{ method = "channel", amount = {AMOUNT} }}')
    out.mkdir(parents=True, exist_ok=True)
    path = out / "kiln.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def table(results: Results, model_dir: Path) -> list[dict]:
    """One row per target and batch: FLOPs and p50 latency, dense vs pruned, from one run."""
    from kiln.manifest import Manifest
    from kiln.results import MeasuredCell

    cells = {(c.key, c.batch): c for c in results.cells}
    rows = []
    for name in TARGETS:
        dense_key, pruned_key = f"{name}-fp32", f"{name}-fp32-channel{round(AMOUNT * 100)}"
        prune = Manifest.read(model_dir / pruned_key).prune
        assert prune is not None, f"{pruned_key} was built without pruning"
        for batch in results.settings.batches:
            dense, pruned = cells.get((dense_key, batch)), cells.get((pruned_key, batch))
            ok = isinstance(dense, MeasuredCell) and isinstance(pruned, MeasuredCell)
            rows.append(
                {
                    "target": name,
                    "batch": batch,
                    "flops_dense": prune.flops_before,
                    "flops_pruned": prune.flops_after,
                    "params_dense": prune.params_before,
                    "params_pruned": prune.params_after,
                    "p50_dense_ms": dense.latency.p50_ms if ok else None,
                    "p50_pruned_ms": pruned.latency.p50_ms if ok else None,
                    "status": "ok" if ok else f"{dense and dense.status} / {pruned and pruned.status}",
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/prune-resnet"))
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="timed seconds per cell")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the targets")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kiln.bench.run import BenchRun, bench

    path = write_config(args.out, args.size, args.min_seconds, args.rounds)
    results, folder = bench(path, BenchRun(out=args.out / "build"), progress=lambda m: print(f"  {m}", flush=True))
    rows = table(results, args.out / "build" / "resnet18")
    (folder / "prune_resnet.json").write_text(json.dumps(rows, indent=2))
    print(f"\nResNet-18-style, {args.size}x{args.size}, channel pruning {AMOUNT:.0%}, threads 2 ({folder})")
    print("| target | batch | GFLOPs dense -> pruned | FLOPs cut | p50 ms dense -> pruned | latency cut | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cut = 1 - r["flops_pruned"] / r["flops_dense"]
        flops = f"{r['flops_dense'] / 1e9:.2f} -> {r['flops_pruned'] / 1e9:.2f}"
        if r["p50_dense_ms"] is None:
            print(f"| {r['target']} | {r['batch']} | {flops} | {cut:.1%} | {r['status']} | | |")
            continue
        lat_cut = 1 - r["p50_pruned_ms"] / r["p50_dense_ms"]
        speed = r["p50_dense_ms"] / r["p50_pruned_ms"]
        lat = f"{r['p50_dense_ms']:.2f} -> {r['p50_pruned_ms']:.2f}"
        print(f"| {r['target']} | {r['batch']} | {flops} | {cut:.1%} | {lat} | {lat_cut:.1%} | {speed:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
