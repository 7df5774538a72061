"""How much does a speed-up move with the interleaving of its rounds? (run by hand)

Identical copies are the test: the base network and capl's L1Norm layer plans at 2x and 4x
fewer MACs (``target: macs``, ImageNet stem, untrained seeded weights; built by
``scripts/compare_plans.py`` as ``scripts/bench_efficiency.py`` builds them) are exported once,
and each ONNX file is opened in several ONNX Runtime sessions. All sessions are timed together
with :func:`capl.benchmark.measure_interleaved`, like the models of one efficiency cell. Every
(base copy, pruned copy) pair then estimates the same speed-up, so the spread of those
estimates within one measurement, and of their medians between measurements, is the timing
protocol's own error. Each ``--rounds`` setting (``0`` stands for the default: one round per
timed run) is measured ``--runs`` times, alternating, with the same ``--repeats`` timed runs
per session.

For each setting and cut it prints, over every pair of every run, the range and the standard
deviation over the median of the speed-up (ratio of median latencies) and of the ratio of the
fastest runs; the median range within a run; and each run's median estimate.

python scripts/bench_interleaving.py --network mobilenet_v3_large --rounds 6 0 --runs 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_plans import base_and_scores, capl_pruned

from capl.benchmark import environment_info, export_onnx, measure_interleaved, ort_timer


def export_variants(network: str, size: int, cuts: list[float], folder: Path) -> dict[str, str]:
    """ONNX files of the base and of capl's L1Norm layer plan at each MACs cut."""
    base, scores = base_and_scores(network, size)
    models = {"base": base}
    for cut in cuts:
        models[f"{cut:g}x"], _ = capl_pruned(base, scores, size, 1 - 1 / cut, "layer", None)
    shape = (3, size, size)
    return {
        name: export_onnx(model, folder / f"{name}.onnx", shape, exporter="torchscript")["path"]
        for name, model in models.items()
    }


def spread(values: list[float]) -> dict[str, float]:
    """Range and standard deviation over the median of ``values``."""
    median = statistics.median(values)
    return {"min": min(values), "max": max(values), "median": median,
            "sd_over_median": statistics.pstdev(values) / median}  # fmt: skip


def estimates(labels: list[str], summaries: list[dict[str, Any]], cut: str) -> dict[str, list]:
    """Speed-up of every (base copy, ``cut`` copy) pair: ratio of medians and of fastest runs."""
    bases = [s for label, s in zip(labels, summaries) if label == "base"]
    pruned = [s for label, s in zip(labels, summaries) if label == cut]
    return {
        "median": [b["median_ms"] / p["median_ms"] for b in bases for p in pruned],
        "fastest": [b["min_ms"] / p["min_ms"] for b in bases for p in pruned],
    }


def report(runs: list[dict[str, Any]], cuts: list[str]) -> str:
    """One line per rounds setting, cut and estimator."""
    lines = []
    for setting in dict.fromkeys(r["rounds"] for r in runs):
        mine = [r for r in runs if r["rounds"] == setting]
        for cut in cuts:
            for kind in ("median", "fastest"):
                per_run = [estimates(r["labels"], r["summaries"], cut)[kind] for r in mine]
                pooled = spread([v for run in per_run for v in run])
                within = statistics.median(
                    (max(v) - min(v)) / statistics.median(v) for v in per_run
                )
                medians = " ".join(f"{statistics.median(v):.3f}" for v in per_run)
                lines.append(
                    f"rounds {setting or 'default'} | {cut} | {kind} | {pooled['min']:.2f}-"
                    f"{pooled['max']:.2f} | {pooled['sd_over_median']:.3f} | {within:.3f} | "
                    f"{medians} | {statistics.median(r['seconds'] for r in mine):.0f} s"
                )
    head = "rounds | cut | speed-up of | all pairs | sd / median | range in a run | run medians"
    return "\n".join([head + " | seconds", "|".join(["---"] * 8), *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="mobilenet_v3_large")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cuts", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--copies", type=int, nargs=2, default=[4, 8], metavar=("BASE", "CUT"),
                        help="sessions of the base and of each cut")  # fmt: skip
    parser.add_argument("--rounds", type=int, nargs="+", default=[6, 0], help="0: the default")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.runs < 1 or min(args.copies) < 1 or min(args.rounds) < 0:
        parser.error("--runs and --copies must be >= 1 and --rounds >= 0")
    torch.set_num_threads(args.threads)
    cuts = [f"{c:g}x" for c in args.cuts]
    labels = ["base"] * args.copies[0] + [c for c in cuts for _ in range(args.copies[1])]
    labels = labels[0::2] + labels[1::2]  # copies of one file apart in the round order
    shape = (3, args.size, args.size)
    runs = []
    with tempfile.TemporaryDirectory(prefix="capl-interleave-") as tmp:
        paths = export_variants(args.network, args.size, args.cuts, Path(tmp))
        for run in range(args.runs):
            order = args.rounds if run % 2 == 0 else args.rounds[::-1]
            for rounds in order:
                start = time.perf_counter()
                timers = [ort_timer(paths[label], shape, args.batch_size, args.threads)
                          for label in labels]  # fmt: skip
                summaries = measure_interleaved(
                    timers, args.warmup, args.repeats, 0.0, rounds or None
                )
                runs.append({"rounds": rounds, "labels": labels, "summaries": summaries,
                             "seconds": time.perf_counter() - start})  # fmt: skip
                print(f"run {run + 1}/{args.runs}, rounds {rounds or 'default'}: "
                      f"{runs[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    text = report(runs, cuts)
    print(text)
    if args.output:
        payload = {
            "command": "python scripts/bench_interleaving.py " + " ".join(sys.argv[1:]),
            "runs": runs,
            "table": text,
            "environment": environment_info(args.threads),
        }
        args.output.write_text(json.dumps(payload, indent=1, default=str))


if __name__ == "__main__":
    main()
