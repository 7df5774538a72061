"""Does interleaved ONNX Runtime timing favour the model timed first? Spinning vs sleeping pools.

The sweep times a group of pruned models against their base in one interleaved run
(:func:`capl.benchmark.measure_interleaved`), so several ONNX Runtime sessions are alive at
once. With more than one intra-op thread, ORT's default pool spins after each run; the spinning
threads of the model just timed then compete with the next model's threads. This script times
one model against identical copies of itself (same ONNX file, so every ratio should be 1.0), in
one process, with spinning allowed (ORT's default) and disallowed (capl's setting), alternating
the two settings every round, and prints each copy's speed relative to the first model.
It also times one session alone per setting at batch 1 and at ``--batch-size`` (what sleeping
pools cost in absolute latency: each parallel op wakes the pool).

python scripts/bench_ort_spinning.py --threads 2 --copies 6 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from capl.benchmark import environment_info, export_onnx, measure_interleaved, ort_timer
from capl.models import build_network


def one_run(onnx: Path, args: argparse.Namespace, spin: bool) -> list[float]:
    """Speed of each copy relative to the first model (first median / copy median)."""
    shape = (3, args.size, args.size)
    timers = [
        ort_timer(onnx, shape, args.batch_size, args.threads, spinning=spin)
        for _ in range(args.copies + 1)
    ]
    results = measure_interleaved(timers, warmup=3, repeats=args.repeats, min_time_s=0.1, rounds=6)
    medians = [r["median_ms"] for r in results]
    return [medians[0] / m for m in medians[1:]]


def alone(onnx: Path, args: argparse.Namespace, spin: bool, batch: int) -> float:
    """Median ms of one session timed by itself (no other session alive)."""
    timer = ort_timer(onnx, (3, args.size, args.size), batch, args.threads, spinning=spin)
    repeats = max(args.repeats, 60 // batch)
    (result,) = measure_interleaved([timer], warmup=5, repeats=repeats, min_time_s=0.0, rounds=1)
    return result["median_ms"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--network", default="resnet20")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = build_network(args.network, 10, small_input=args.size < 64).eval()
    ratios: dict[str, list[list[float]]] = {"spinning": [], "sleeping": []}
    single: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="capl-spin-") as tmp:
        onnx = Path(tmp) / "model.onnx"
        export_onnx(model, onnx, (3, args.size, args.size), exporter="torchscript")
        for r in range(args.rounds):
            order = [True, False] if r % 2 == 0 else [False, True]
            for spin in order:
                mode = "spinning" if spin else "sleeping"
                got = one_run(onnx, args, spin)
                ratios[mode].append(got)
                print(f"round {r}: {mode:8s} copy speed / first {[round(x, 2) for x in got]}",
                      flush=True)  # fmt: skip
                for batch in (1, args.batch_size):
                    single.setdefault(f"{mode} bs{batch}", []).append(
                        alone(onnx, args, spin, batch)
                    )
    summary = {}
    for mode, runs in ratios.items():
        flat = [x for run in runs for x in run]
        summary[mode] = {"median": statistics.median(flat), "min": min(flat), "max": max(flat)}
        print(f"{mode:8s}: median {summary[mode]['median']:.2f}, range "
              f"{summary[mode]['min']:.2f}-{summary[mode]['max']:.2f} (1.00 is fair)")  # fmt: skip
    for key, ms in sorted(single.items()):
        summary[f"alone {key} ms"] = statistics.median(ms)
        print(f"one session alone, {key}: median {statistics.median(ms):.3f} ms")
    if args.output:
        record = {
            "args": vars(args) | {"output": str(args.output)},
            "ratios": ratios,
            "alone_ms": single,
            "summary": summary,
            "environment": environment_info(ort_threads=args.threads),
        }
        args.output.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
