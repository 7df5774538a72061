"""How steady and how right is a latency table? (run by hand; benchmarks/efficiency.md).

Measures the ONNX Runtime latency table of a network ``--tables`` times, back to back, and
prints what each predicts for capl's L1Norm layer plans at 2x and 4x MACs cut (bench_efficiency.py
times those plans). Then times one lone conv (``--lone``: inputs, outputs, size) and splits its
time into ORT's kernels, which shows what the layout reorders around a lone layer cost.

python scripts/latency_table_spread.py --network mobilenet_v3_large --tables 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_plans import base_and_scores

from capl.benchmark import export_onnx, measure_latency_onnxruntime, profiled_runs
from capl.criteria import get_criterion
from capl.pruning import PruningConfig, make_plan
from capl.pruning.latency_table import LatencySpec, network_latency_table


def predicted(network: str, size: int, tables: int) -> None:
    """Measure the table ``tables`` times; print each one's predicted speed-ups."""
    torch.set_num_threads(1)
    base, scores = base_and_scores(network, size)
    example = torch.zeros(1, 3, size, size)
    spec = LatencySpec(backend="onnxruntime", batch_size=32, threads=1, exporter="torchscript")
    round_to = PruningConfig(0.0).resolved_round_to()
    for i in range(tables):
        start = time.perf_counter()
        table = network_latency_table(base, example, spec, round_to)
        took = time.perf_counter() - start
        speedups = []
        for ratio in (0.5, 0.75):
            config = PruningConfig(ratio, scope="layer", target="macs")
            plan = make_plan(base, get_criterion("L1Norm"), scores, config, example, latency=table)
            sel = plan.report["selection"]
            speedups.append(sel["predicted_base_latency_ms"] / sel["predicted_latency_ms"])
        print(f"table {i}: measured in {took:.1f} s, whole network {table.base_ms:.1f} ms; "
              f"predicted 2x plan {speedups[0]:.2f}x, 4x plan {speedups[1]:.2f}x")  # fmt: skip


def lone_layer(inputs: int, outputs: int, size: int, runs: int = 10, warmup: int = 3) -> None:
    """One lone 1x1 conv at bs32: clock time and ORT's kernels (medians over ``runs``)."""
    torch.manual_seed(0)
    shape = (inputs, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(nn.Conv2d(inputs, outputs, 1).eval(), Path(tmp) / "c.onnx", shape)
        clock = measure_latency_onnxruntime(path["path"], shape, 32, 1, warmup=warmup,
                                            repeats=runs, min_time_s=0.0)  # fmt: skip
        per_op: dict[str, list[float]] = {}
        for run in profiled_runs(path["path"], shape, 32, 1, warmup=warmup, runs=runs):
            for (op, _), ms in run.items():
                per_op.setdefault(op, []).append(ms)
    kernels = ", ".join(f"{op} {statistics.median(v):.1f} ms" for op, v in per_op.items())
    print(f"lone 1x1 conv {inputs} -> {outputs} at {size}x{size}, bs32: clock "
          f"{clock['median_ms']:.1f} ms; kernels: {kernels}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="mobilenet_v3_large")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--lone", type=int, nargs=3, default=[16, 64, 112],
                        metavar=("IN", "OUT", "SIZE"))  # fmt: skip
    args = parser.parse_args()
    if args.tables < 0 or min(args.lone) < 1:
        parser.error("--tables must be >= 0 and --lone's numbers >= 1")
    predicted(args.network, args.size, args.tables)
    lone_layer(*args.lone)


if __name__ == "__main__":
    main()
