"""Where a pruned network's time goes in ONNX Runtime: per-node kernel time, base against plan.

Builds the network as ``scripts/bench_efficiency.py`` does (ImageNet stem, untrained seeded
weights), makes capl's L1Norm plan (``target: macs``, scope, ratio, ``round_to`` auto unless
``--round-to``; :func:`compare_plans.capl_pruned`), exports both models, runs each in an ONNX
Runtime session with its profiler on, and prints, for the nodes that take the most of the
pruned model's time: the base and pruned milliseconds per batch, their ratio, and the node's
share of the pruned total; then the totals per operator type. The first ``--warmup`` runs of
each session are left out. Nodes are ONNX Runtime's after its graph optimisations (a conv
fused with its activation is one node, named after the activation's output).

Efficiency (measured over theoretical speed-up) is lost in nodes whose time ratio stays far
below the network's MACs ratio: layers a plan cannot shrink (a width already at ``round_to``)
or memory-bound ones.

python scripts/profile_layers.py --network mobilenet_v3_large --ratio 0.75
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_plans import base_and_scores, capl_pruned

from capl.benchmark import (
    count_conv_linear_macs,
    export_onnx,
    profiled_runs,
)


def node_times(path: Path, shape: tuple[int, ...], args: argparse.Namespace) -> Counter:
    """Milliseconds per run of each ONNX Runtime node (kernel time), warm-up runs left out.

    The session is the benchmark's own (:func:`capl.benchmark.profiled_runs`), on its input.
    """
    runs = profiled_runs(
        path, shape, args.batch_size, args.threads, warmup=args.warmup, runs=args.runs
    )
    times: Counter = Counter()
    for run in runs:
        for key, ms in run.items():
            times[key] += ms / args.runs
    return times


def _per_op(times: Counter) -> Counter:
    """Milliseconds per operator type."""
    ops: Counter = Counter()
    for (op, _), ms in times.items():
        ops[op] += ms
    return ops


def report(base: Counter, pruned: Counter, top: int) -> None:
    """Print the ``top`` nodes by pruned time, then the totals per operator type."""
    total = sum(pruned.values())
    print("| node | op | base ms | pruned ms | base / pruned | share of pruned |")
    print("|" + "---|" * 6)
    for (op, name), ms in pruned.most_common(top):
        before = base.get((op, name), 0.0)
        print(f"| {name} | {op} | {before:.2f} | {ms:.2f} | {before / ms:.2f} | "
              f"{100 * ms / total:.1f} % |")  # fmt: skip
    ops_base, ops_pruned = _per_op(base), _per_op(pruned)
    print("\n| op | base ms | pruned ms | base / pruned |")
    print("|" + "---|" * 4)
    for op, ms in ops_base.most_common():
        print(f"| {op} | {ms:.1f} | {ops_pruned[op]:.1f} | {ms / max(ops_pruned[op], 1e-9):.2f} |")
    print(f"| all | {sum(base.values()):.1f} | {total:.1f} | {sum(base.values()) / total:.2f} |")


def main() -> None:
    """Profile the base and capl's plan of ``--network`` and print where the time goes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="mobilenet_v3_large")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--ratio", type=float, default=0.75)
    parser.add_argument("--scope", choices=("layer", "global"), default="layer")
    parser.add_argument("--round-to", type=int, default=None, help="capl's; default auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    base, scores = base_and_scores(args.network, args.size)
    pruned, _ = capl_pruned(base, scores, args.size, args.ratio, args.scope, args.round_to)
    shape = (3, args.size, args.size)
    theoretical = count_conv_linear_macs(base, shape) / count_conv_linear_macs(pruned, shape)
    times: list[Counter] = []
    with tempfile.TemporaryDirectory(prefix="capl-profile-") as tmp:
        for name, model in (("base", base), ("pruned", pruned)):
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(model, path, shape, exporter="torchscript")
            times.append(node_times(path, shape, args))
    print(f"{args.network} at {args.size}, capl L1Norm {args.scope} ratio {args.ratio} (MACs "
          f"{theoretical:.2f}x fewer); ONNX Runtime bs{args.batch_size}, {args.threads} "
          f"thread(s), {args.runs} profiled runs after {args.warmup}\n")  # fmt: skip
    report(*times, args.top)


if __name__ == "__main__":
    main()
