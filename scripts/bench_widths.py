"""Width-latency staircase: how a conv pair's latency steps with its pruned width (run by hand).

For each ResNet-18 stage at 224x224 (56x56 x 64, 28x28 x 128, 14x14 x 256, 7x7 x 512 channels) a
pair ``conv3x3(C -> w) -> ReLU -> conv3x3(w -> C)`` is timed for every kept width ``w`` from
``C - span`` to ``C``, in PyTorch and ONNX Runtime, in alternating rounds (every width once per
round, order reversed every other round). Pruning one channel group changes exactly such a pair:
the producer's outputs and the consumer's inputs. The table shows latency per width and its
ratio to the ideal (MACs-proportional) latency, so steps at multiples of 4 / 8 / 16 show up as
the widths where the ratio drops. ``round_to: auto`` in capl.pruning follows what this shows.

python scripts/bench_widths.py --threads 2 --batch-sizes 32 1 --rounds 3 \
    --output benchmarks/widths.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from capl.benchmark import environment_info, export_onnx, ort_timer, torch_timer

STAGES = ((56, 64), (28, 128), (14, 256), (7, 512))


def pair(channels: int, width: int) -> nn.Module:
    """The conv pair of one pruned channel group (seeded weights)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(width, channels, 3, padding=1, bias=False),
    ).eval()


def time_stage(
    size: int, channels: int, widths: list[int], batch: int, args: argparse.Namespace, tmp: Path
) -> dict[str, dict[int, float]]:
    """Median ms per backend and width, widths timed in alternating rounds."""
    shape = (channels, size, size)
    nets = {w: pair(channels, w) for w in widths}
    onnx = {}
    for w, net in nets.items():
        path = tmp / f"pair_{size}_{w}.onnx"
        onnx[w] = export_onnx(net, path, shape, exporter="torchscript")["path"]
    out: dict[str, dict[int, float]] = {}
    for backend in args.backends:
        timers = {}
        for w in widths:
            if backend == "torch":
                timers[w] = torch_timer(nets[w], shape, batch, threads=args.threads)
            else:
                timers[w] = ort_timer(onnx[w], shape, batch, threads=args.threads)
        entered = {w: t.__enter__() for w, t in timers.items()}
        try:
            times: dict[int, list[float]] = {w: [] for w in widths}
            for step, _ in entered.values():
                for _ in range(args.warmup):
                    step()
            for r in range(args.rounds):
                order = widths if r % 2 == 0 else list(reversed(widths))
                for w in order:
                    step = entered[w][0]
                    times[w] += [step() for _ in range(args.repeats)]
        finally:
            for t in timers.values():
                t.__exit__(None, None, None)
        out[backend] = {w: statistics.median(v) for w, v in times.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    parser.add_argument("--span", type=int, default=16, help="widths C - span .. C")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per width per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--stages", type=int, nargs="+", default=list(range(len(STAGES))))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in args.stages:
            size, channels = STAGES[index]
            widths = list(range(channels - args.span, channels + 1))
            for batch in args.batch_sizes:
                medians = time_stage(size, channels, widths, batch, args, Path(tmp))
                results.append(
                    {"size": size, "channels": channels, "batch_size": batch, "medians": medians}
                )
                print(f"\n{size}x{size}, C={channels}, bs{batch}: median ms (ratio to MACs-ideal)")
                print("width " + " ".join(f"{b:>22}" for b in medians))
                for w in widths:
                    cells = []
                    for per in medians.values():
                        ideal = per[channels] * w / channels
                        cells.append(f"{per[w]:>12.3f} ({per[w] / ideal:5.2f})")
                    print(f"{w:>5} " + " ".join(f"{c:>22}" for c in cells))
    if args.output:
        payload = {
            "command": "python scripts/bench_widths.py " + " ".join(sys.argv[1:]),
            "results": results,
            "environment": environment_info(args.threads),
            "load_average": os.getloadavg(),
            "seconds": time.perf_counter() - start,
        }
        args.output.write_text(json.dumps(payload, indent=1, default=str))


if __name__ == "__main__":
    main()
