"""Selection and planning cost before and after issue 9's changes, in one process (run by hand).

Each round times, one after the other (order reversed every other round), the plain passes
(forward under ``inference_mode``; forward + backward of the target logits to the input), the
data-driven criteria as they are now and as they were (the *legacy* variants rebuild the old
code paths from the library's pieces: OCAP / APoZ reducing recorded, cloned sites after the
forward under ``no_grad``; LRP with zennit's ``AlphaBeta(1, 0)`` and two-term ``ZPlus``), and
``make_plan`` now and as it was (its report re-measuring output sizes with two forwards, run on
the caller's thread count). Ratios are medians over rounds of the per-round ratio.

python scripts/bench_costs.py --size 224 --images 16 --batch-size 8 --threads 2 --rounds 3 \
    --output /tmp/costs.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_selection import plain_forward, plain_forward_backward  # sibling script: sys.path[0]
from torch import Tensor, nn
from zennit.rules import AlphaBeta, ZPlus

from capl.benchmark import environment_info
from capl.criteria import LRP, OCAP, APoZ, L1Norm, Taylor
from capl.criteria import lrp as lrp_module
from capl.criteria._activations import ActivationSites, conv_layers, iter_batches, new_stat
from capl.criteria.base import run_in_eval
from capl.models import build_network, model_device
from capl.pruning import PruningConfig, make_plan, prunable_layers
from capl.pruning import plan as plan_module
from capl.pruning.select import select_scores


class LegacyOCAP(OCAP):
    """OCAP as it was: cloned sites recorded during the forward, reduced after it, no_grad."""

    def collect(self, model, batches, layers, target_rows):
        convs = conv_layers(layers)
        device = model_device(model)
        stats = {
            f"{n}/rank_counts": new_stat((c.out_channels, c.out_channels), device, torch.int32)
            for n, c in convs.items()
        }
        with run_in_eval(model), ActivationSites(model, convs) as rec, torch.no_grad():
            for images, _ in iter_batches(batches, device):
                rec.reset()
                model(images)
                for name, site in rec.sites.items():
                    strength = F.leaky_relu(site, self.negative_slope).flatten(2).norm(dim=2)
                    self._add_ranks(stats[f"{name}/rank_counts"], strength)
                rec.reset()
        return stats


class LegacyAPoZ(APoZ):
    """APoZ as it was (see :class:`LegacyOCAP`)."""

    def collect(self, model, batches, layers, target_rows):
        convs = conv_layers(layers)
        device = model_device(model)
        stats: dict[str, Tensor] = {}
        for name, conv in convs.items():
            stats[f"{name}/zeros"] = new_stat(conv.out_channels, device, torch.int64)
            stats[f"{name}/elements"] = new_stat(conv.out_channels, device, torch.int64)
        with run_in_eval(model), ActivationSites(model, convs) as rec, torch.no_grad():
            for images, _ in iter_batches(batches, device):
                rec.reset()
                model(images)
                for name, site in rec.sites.items():
                    stats[f"{name}/zeros"] += (site <= 0).sum(dim=(0, 2, 3))
                    stats[f"{name}/elements"] += site[:, 0].numel()
                rec.reset()
        return stats


class LegacyLRP(LRP):
    """LRP with zennit's own rules: AlphaBeta(1, 0) keeps its beta terms, ZPlus two terms."""

    def collect(self, model, batches, layers, target_rows):
        saved = lrp_module._ZPlus, lrp_module._alpha_beta
        lrp_module._ZPlus = ZPlus
        lrp_module._alpha_beta = lambda alpha, beta, zero_params=None: AlphaBeta(
            alpha=alpha, beta=beta, zero_params=zero_params
        )
        try:
            return super().collect(model, batches, layers, target_rows)
        finally:
            lrp_module._ZPlus, lrp_module._alpha_beta = saved


def legacy_make_plan(*args: Any, **kwargs: Any) -> Any:
    """``make_plan`` as it was: report by forwards, on the caller's threads."""
    original = plan_module.pruning_report
    plan_module.pruning_report = lambda before, after, x, positions=None: original(before, after, x)
    try:
        return make_plan.__wrapped__(*args, **kwargs)
    finally:
        plan_module.pruning_report = original


def interleaved(work: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds per round of every item, order reversed every other round (one warm-up)."""
    for fn in work.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in work}
    for r in range(rounds):
        for name in list(work) if r % 2 == 0 else list(reversed(work)):
            start = time.perf_counter()
            work[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired(times: dict[str, list[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plan-rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args()


def selection_times(model: nn.Module, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Each criterion's selection against a plain forward (and forward+backward) pass."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, args.size, args.size, generator=gen)
    labels = torch.randint(0, 10, (args.images,), generator=gen)
    batches = list(zip(images.split(args.batch_size), labels.split(args.batch_size)))
    rows = torch.arange(10)
    work: dict[str, Callable[[], Any]] = {
        "forward": lambda: plain_forward(model, batches),
        "forward+backward": lambda: plain_forward_backward(model, batches, rows),
    }
    for crit in (OCAP(), LegacyOCAP(), APoZ(), LegacyAPoZ(), LRP(), LegacyLRP(), Taylor()):
        work[type(crit).__name__] = lambda c=crit: select_scores(c, model, batches, list(range(10)))
    times = interleaved(work, args.rounds)
    return {
        name: {
            "median_s": statistics.median(times[name]),
            "over_forward": paired(times, name, "forward"),
            "over_forward_backward": paired(times, name, "forward+backward"),
        }
        for name in work
    }


def plan_times(model: nn.Module, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per run of make_plan and of make_plan as it was, interleaved."""
    criterion = L1Norm()
    scores = criterion.score(model, prunable_layers(model), {})
    example = torch.zeros(1, 3, args.size, args.size)
    config = PruningConfig(0.5, scope="global", target="macs")
    make_plan(model, criterion, scores, config, example)  # trace once (cached per model)
    return interleaved(
        {
            "make_plan": lambda: make_plan(model, criterion, scores, config, example),
            "legacy_make_plan": lambda: legacy_make_plan(model, criterion, scores, config, example),
        },
        args.plan_rounds,
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start, load = time.perf_counter(), os.getloadavg()
    torch.manual_seed(0)
    model = build_network(args.network, 10, small_input=args.size <= 64).eval()
    selection = selection_times(model, args)
    plans = plan_times(model, args)
    result = {
        "command": "python scripts/bench_costs.py " + " ".join(sys.argv[1:]),
        "selection": selection,
        "make_plan": {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in plans.items()},
        "make_plan_speedup": paired(plans, "legacy_make_plan", "make_plan"),
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "seconds": time.perf_counter() - start,
        "environment": environment_info(args.threads),
    }
    print(
        json.dumps(
            {k: result[k] for k in ("selection", "make_plan", "make_plan_speedup")}, indent=1
        )
    )
    if args.output:
        args.output.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
