"""Per-layer widths and MACs of capl's L1Norm plan against Torch-Pruning's at the same MACs.

Builds the network as ``scripts/bench_efficiency.py`` does (ImageNet stem, untrained seeded
weights), makes capl's L1Norm plan (``target: macs``, the given scope and ratio, ``round_to``
auto or ``--round-to``) and Torch-Pruning's ``MetaPruner`` (L1, ``round_to`` 8, bisected to
capl's realised MACs, :func:`bench_efficiency.torch_pruning_at`), and prints one row per conv /
linear: base / capl / TP output width and MACs, and where they differ: ``width``, or
``capl~N`` / ``TP~N`` for a pruned width that is not a multiple of ``--multiple`` (default: the
CPU's channel block, what ``round_to: auto`` resolves to here); then MACs per role (conv,
depthwise, SE fc1 / fc2, linear).

With ``--time``, the comparison is measured instead: capl's plan with each ``--time-round-to``
multiple (and, with ``--ignore``, the first multiple with those groups kept whole) and
Torch-Pruning's at the first plan's MACs are timed with the base in one process, alternating
rounds (ONNX Runtime, ``--batch-size``, ``--threads``), and efficiency = measured / theoretical
speed-up is printed per variant.

python scripts/compare_plans.py --network mobilenet_v3_large --ratios 0.5 0.75
python scripts/compare_plans.py --time --time-round-to 8 16 --ignore features.0.0
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_efficiency import CLASSES, calibration, torch_pruning_at

from capl.benchmark import count_conv_linear_macs, export_onnx, measure_interleaved, ort_timer
from capl.criteria import get_criterion
from capl.models import build_network
from capl.pruning import PruningConfig, apply_plan, auto_round_to, make_plan
from capl.pruning.select import select_scores


def conv_table(model: nn.Module, size: int) -> dict[str, dict[str, int]]:
    """Per conv / linear: ``out``, ``in``, ``groups`` and MACs for one ``size`` image."""
    out: dict[str, dict[str, int]] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, _inp: Any, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs = output.numel() * (module.in_channels // module.groups) * k
            row = {"out": module.out_channels, "in": module.in_channels, "groups": module.groups}
        else:
            assert isinstance(module, nn.Linear)
            macs = output.numel() * module.in_features
            row = {"out": module.out_features, "in": module.in_features, "groups": 1}
        out[names[module]] = {**row, "macs": int(macs)}

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return out


def role(name: str, row: dict[str, int]) -> str:
    """A short label for a conv's place in a block."""
    if row["groups"] > 1:
        return "dw"
    if ".fc1" in name:
        return "se1"
    if ".fc2" in name:
        return "se2"
    return "linear" if name.startswith("classifier") else "conv"


def base_and_scores(network: str, size: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The seeded untrained network and its L1Norm scores, as bench_efficiency.py makes them."""
    torch.manual_seed(0)
    base = build_network(network, 1000).eval()
    scores = select_scores(
        get_criterion("L1Norm"), base, calibration(size, 8, 8), list(range(CLASSES))
    )
    return base, scores


def capl_pruned(
    base: nn.Module,
    scores: dict[str, torch.Tensor],
    size: int,
    ratio: float,
    scope: str,
    round_to: int | None,
    ignore: list[str] | None = None,
) -> tuple[nn.Module, Any]:
    """capl's L1Norm ``target: macs`` plan (``round_to`` ``None``: auto) and the pruned copy."""
    config = PruningConfig(
        ratio, scope=scope, target="macs", round_to=round_to or "auto", ignore=ignore or []
    )
    plan = make_plan(base, get_criterion("L1Norm"), scores, config, torch.zeros(1, 3, size, size))
    return apply_plan(copy.deepcopy(base), plan), plan


def time_variants(args: argparse.Namespace) -> None:
    """Time capl's variants and Torch-Pruning's with the base, interleaved; print efficiency."""
    base, scores = base_and_scores(args.network, args.size)
    shape = (3, args.size, args.size)
    names, models = ["base"], [base]
    for ratio in args.ratios:
        jobs = [(rt, None) for rt in args.time_round_to]
        if args.ignore:
            jobs.append((args.time_round_to[0], args.ignore))
        for rt, ignore in jobs:
            net, _ = capl_pruned(base, scores, args.size, ratio, args.scope, rt, ignore)
            names.append(f"{ratio} capl round_to {rt}" + (f" ignore {ignore}" if ignore else ""))
            models.append(net)
        first = count_conv_linear_macs(models[len(models) - len(jobs)], shape)
        names.append(f"{ratio} Torch-Pruning at the first plan's MACs")
        models.append(torch_pruning_at(base, args.size, first)[0])
    macs = [count_conv_linear_macs(m, shape) for m in models]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="capl-cmp-") as tmp:
        paths = [
            export_onnx(m, Path(tmp) / f"m{i}.onnx", shape, exporter="torchscript")["path"]
            for i, m in enumerate(models)
        ]
        timers = [ort_timer(p, shape, args.batch_size, args.threads) for p in paths]
        summaries = measure_interleaved(timers, 2, args.repeats, 0.0, args.rounds)
    base_ms = summaries[0]["median_ms"]
    end = os.getloadavg()[0]
    print(f"\nONNX Runtime bs{args.batch_size}, {args.threads} thread(s), {args.repeats} runs in "
          f"{args.rounds} rounds; load average {load[0]:.1f} -> {end:.1f}")  # fmt: skip
    print("| variant | MACs removed | theoretical | median ms | speed-up | efficiency | busy |")
    print("|" + "---|" * 7)
    for name, m, summary in zip(names, macs, summaries):
        theoretical = macs[0] / m
        speedup = base_ms / summary["median_ms"]
        print(
            f"| {name} | {100 * (1 - m / macs[0]):.1f} % | {theoretical:.2f}x | "
            f"{summary['median_ms']:.1f} | {speedup:.2f}x | {speedup / theoretical:.2f} | "
            f"{'yes' if summary['busy'] else ''} |"
        )


def compare(
    network: str, size: int, ratio: float, scope: str, multiple: int, round_to: int | None
) -> None:
    """Print the per-layer comparison for one ratio (``round_to`` ``None``: capl's auto)."""
    base, scores = base_and_scores(network, size)
    capl_net, plan = capl_pruned(base, scores, size, ratio, scope, round_to)
    macs = count_conv_linear_macs(capl_net, (3, size, size))
    tp_net, tp_ratio = torch_pruning_at(base, size, macs)
    b, c, t = (conv_table(m, size) for m in (base, capl_net, tp_net))
    tb, tc, tt = (sum(r["macs"] for r in x.values()) for x in (b, c, t))
    rt = plan.report["selection"]["round_to"]
    print(f"\n## {network} at {size}, ratio {ratio} ({scope} scope, capl round_to {rt}); "
          f"TP ratio {tp_ratio:.4f}")  # fmt: skip
    print(f"MACs: base {tb / 1e6:.1f} M, capl {tc / 1e6:.1f} M, TP {tt / 1e6:.1f} M")
    head = "| conv | role | base out | capl out | TP out | capl MACs M | TP MACs M | differ |"
    print(head)
    print("|" + "---|" * 8)
    sums: dict[str, list[float]] = {}
    for name, row in b.items():
        r = role(name, row)
        co, to = c[name]["out"], t[name]["out"]
        mark = []
        if co != to:
            mark.append("width")
        if co % multiple and co != row["out"]:
            mark.append(f"capl~{multiple}")
        if to % multiple and to != row["out"]:
            mark.append(f"TP~{multiple}")
        cm, tm = c[name]["macs"] / 1e6, t[name]["macs"] / 1e6
        print(
            f"| {name} | {r} | {row['out']} | {co} | {to} | {cm:.2f} | {tm:.2f} | "
            f"{' '.join(mark)} |"
        )
        s = sums.setdefault(r, [0.0, 0.0, 0.0])
        s[0] += row["macs"] / 1e6
        s[1] += cm
        s[2] += tm
    print("\n| role | base MACs M | capl MACs M | TP MACs M |")
    print("|---|---|---|---|")
    for r, (x, y, z) in sums.items():
        print(f"| {r} | {x:.1f} | {y:.1f} | {z:.1f} |")
    for label, table in (("capl", c), ("TP", t)):
        kept = sum(1 for n, row in b.items() if table[n]["out"] == row["out"])
        print(f"{label}: {kept} of {len(b)} convs/linears keep their full output width")


def main() -> None:
    """Parse arguments and print the comparison for every ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="mobilenet_v3_large")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.75])
    parser.add_argument("--scope", default="layer", choices=["layer", "global"])
    parser.add_argument("--multiple", type=int, default=auto_round_to("cpu"))
    parser.add_argument("--round-to", type=int, default=None, help="capl's; default auto")
    parser.add_argument("--time", action="store_true", help="measure variants instead")
    parser.add_argument("--time-round-to", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--ignore", nargs="*", default=None, help="groups a variant keeps whole")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=40, help="timed runs per model")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.time:
        time_variants(args)
        return
    for ratio in args.ratios:
        compare(args.network, args.size, ratio, args.scope, args.multiple, args.round_to)


if __name__ == "__main__":
    main()
