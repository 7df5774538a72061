"""Per-layer widths and MACs of capl's L1Norm plan against Torch-Pruning's at the same MACs.

Builds the network as ``scripts/bench_efficiency.py`` does (ImageNet stem, untrained seeded
weights), makes capl's L1Norm plan (``target: macs``, the given scope and ratio, ``round_to``
auto or ``--round-to``) and Torch-Pruning's ``MetaPruner`` (L1, ``round_to`` 8, bisected to
capl's realised MACs, :func:`bench_efficiency.torch_pruning_at`), and prints one row per conv /
linear: base / capl / TP output width and MACs, and where they differ: ``width``, or
``capl~N`` / ``TP~N`` for a pruned width that is not a multiple of ``--multiple`` (default: the
CPU's channel block, what ``round_to: auto`` resolves to here); then MACs per role (conv,
depthwise, SE fc1 / fc2, linear).

python scripts/compare_plans.py --network mobilenet_v3_large --ratios 0.5 0.75
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_efficiency import CLASSES, calibration, torch_pruning_at

from capl.benchmark import count_conv_linear_macs
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


def compare(
    network: str, size: int, ratio: float, scope: str, multiple: int, round_to: int | None
) -> None:
    """Print the per-layer comparison for one ratio (``round_to`` ``None``: capl's auto)."""
    torch.manual_seed(0)
    base = build_network(network, 1000).eval()
    example = torch.zeros(1, 3, size, size)
    scores = select_scores(
        get_criterion("L1Norm"), base, calibration(size, 8, 8), list(range(CLASSES))
    )
    config = PruningConfig(ratio, scope=scope, target="macs", round_to=round_to or "auto")
    plan = make_plan(base, get_criterion("L1Norm"), scores, config, example)
    capl_net = apply_plan(copy.deepcopy(base), plan)
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
    args = parser.parse_args()
    torch.set_num_threads(1)
    for ratio in args.ratios:
        compare(args.network, args.size, ratio, args.scope, args.multiple, args.round_to)


if __name__ == "__main__":
    main()
