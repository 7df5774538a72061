"""Cost of selection per data-driven criterion vs. plain passes over the same images (by hand).

Each criterion with ``requires_data`` (Taylor, APoZ, LRP, OCAP, ...) is timed for
``collect`` + ``score`` over the calibration images and compared with the plain pass it builds
on, over exactly the same batches (the calibration loader is materialised once):

* forward-only criteria (APoZ, OCAP): a plain forward in eval mode under
  ``torch.inference_mode``;
* gradient-based criteria (Taylor, LRP): a plain forward in eval mode plus a plain backward
  (``torch.autograd.grad`` of the summed target logits w.r.t. the input images, so no parameter
  gradient is accumulated, as in the criteria). LRP's cost includes zennit's modified backward,
  its canonizers (BatchNorm folding) and hooks.

``make_plan`` is timed separately (layer / global scope, unit ratio / ``target: macs``), once
cold (the structure is traced and cached on the first call for a model) and then warm.

Every time is the median of ``--repeats`` after ``--warmup`` untimed runs. Ratios measured in
one run on one machine are the result; absolute seconds depend on the machine and its load.

    python scripts/bench_selection.py --network resnet18 --samples-per-class 16 --threads 2
    python scripts/bench_selection.py --network resnet20 --output /tmp/sel_resnet20.json
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capl.criteria import available_criteria, get_criterion
from capl.datamodules import DigitsSubset
from capl.io import write_json_atomic
from capl.models import build_network
from capl.pruning import PruningConfig, make_plan, select_scores

Batches = list[tuple[Tensor, Tensor]]

GRADIENT_CRITERIA = frozenset({"Taylor", "LRP"})


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, list[float]]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Args:
        fn: The work to time (no arguments).
        repeats: Timed runs (at least 1).
        warmup: Untimed runs before them.

    Returns:
        The median wall time in seconds and the list of all timed runs.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def plain_forward(model: nn.Module, batches: Batches) -> None:
    """A plain forward pass over ``batches`` in eval mode under ``torch.inference_mode``.

    Args:
        model: The network (already in eval mode).
        batches: ``(images, labels)`` pairs.
    """
    with torch.inference_mode():
        for images, _ in batches:
            model(images)


def plain_forward_backward(model: nn.Module, batches: Batches, rows: Tensor) -> None:
    """A plain forward plus backward pass over ``batches`` in eval mode.

    The backward differentiates the summed target logit of each image (its label's head row)
    with respect to the input images, so that every layer's backward runs but no parameter's
    ``.grad`` is created, as in the gradient-based criteria.

    Args:
        model: The network (already in eval mode).
        batches: ``(images, labels)`` pairs.
        rows: Head row of each subset label.
    """
    _backward_to_input(
        model, batches, lambda logits, labels: logits.gather(1, rows[labels][:, None]).sum()
    )


def loss_forward_backward(model: nn.Module, batches: Batches, rows: Tensor) -> None:
    """Like :func:`plain_forward_backward` but from the k-way cross-entropy (Taylor's loss).

    Args:
        model: The network (already in eval mode).
        batches: ``(images, labels)`` pairs.
        rows: Head row of each subset label.
    """
    _backward_to_input(
        model,
        batches,
        lambda logits, labels: F.cross_entropy(
            logits.index_select(1, rows), labels, reduction="sum"
        ),
    )


def _backward_to_input(
    model: nn.Module, batches: Batches, objective: Callable[[Tensor, Tensor], Tensor]
) -> None:
    """Differentiate ``objective(logits, labels)`` of every batch with respect to its images."""
    with torch.enable_grad():
        for images, labels in batches:
            x = images.detach().requires_grad_(True)
            torch.autograd.grad(objective(model(x), labels), x)


def data_criteria(names: Sequence[str] | None) -> list[str]:
    """Names of the registered criteria that need data (all of them, or those asked for).

    Args:
        names: Criterion names to keep, or ``None`` for every data-driven criterion.

    Returns:
        Sorted criterion names.

    Raises:
        SystemExit: A requested name is not a data-driven criterion.
    """
    registry = available_criteria()
    found = sorted(n for n, cls in registry.items() if cls.requires_data)
    if names is None:
        return found
    bad = [n for n in names if n not in found]
    if bad:
        raise SystemExit(f"not data-driven criteria: {bad}; choose from {found}")
    return list(names)


def build(args: argparse.Namespace) -> tuple[nn.Module, Batches, list[int], tuple[int, ...]]:
    """Build the network and materialise the calibration batches once.

    Args:
        args: Parsed command line.

    Returns:
        The model (eval mode), the calibration batches, the target rows and the input shape.
    """
    data = DigitsSubset(
        classes=args.classes,
        batch_size=args.batch_size,
        calibration_samples_per_class=args.samples_per_class,
        seed=args.seed,
    )
    data.prepare_data()
    data.setup("fit")
    batches = [
        (images.contiguous(), labels.contiguous())
        for images, labels in data.calibration_dataloader()
    ]
    torch.manual_seed(args.seed)
    # the head predicts all ten digits, as a base model trained on digits does
    model = build_network(args.network, num_classes=10, small_input=args.small_input).eval()
    target_rows = list(data.class_indices)
    return model, batches, target_rows, tuple(data.input_shape)


def plain_kind(name: str) -> str:
    """The plain pass a criterion is compared with.

    Args:
        name: Criterion class name.

    Returns:
        ``"forward"``, ``"forward+backward"`` (target logit) or ``"forward+backward(ce)"``
        (Taylor's cross-entropy loss).
    """
    if name == "Taylor":
        return "forward+backward(ce)"
    if name in GRADIENT_CRITERIA:
        return "forward+backward"
    return "forward"


def time_criteria(
    model: nn.Module,
    batches: Batches,
    target_rows: list[int],
    names: Sequence[str],
    repeats: int,
    warmup: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time selection (collect + score) of each criterion and the plain passes, interleaved.

    On a shared machine the load changes between measurements, so each repeat runs every
    plain pass and every criterion once, one after the other; a criterion's ``paired_ratio`` is
    the median over repeats of its time divided by its plain pass's time *in the same repeat*.

    Args:
        model: The network in eval mode.
        batches: Calibration batches, reused by every measurement.
        target_rows: Head row of each subset label.
        names: Criteria to time.
        repeats: Timed rounds.
        warmup: Untimed rounds before them.

    Returns:
        One row per criterion, and the plain pass timings by kind.
    """
    rows = torch.tensor(target_rows, dtype=torch.long)
    work: dict[str, Callable[[], Any]] = {
        "forward": lambda: plain_forward(model, batches),
        "forward+backward": lambda: plain_forward_backward(model, batches, rows),
        "forward+backward(ce)": lambda: loss_forward_backward(model, batches, rows),
    }
    criteria = {}
    for name in names:
        criterion = get_criterion(name)
        criteria[name] = criterion

        def select(criterion: Any = criterion) -> dict[str, Tensor]:
            return select_scores(criterion, model, batches, target_rows)

        work[name] = select

    times: dict[str, list[float]] = {key: [] for key in work}
    for round_index in range(warmup + repeats):
        for key, fn in work.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[key].append(elapsed)

    plain = {
        kind: {"median_s": statistics.median(times[kind]), "times_s": times[kind]}
        for kind in ("forward", "forward+backward", "forward+backward(ce)")
    }
    results = []
    for name, criterion in criteria.items():
        kind = plain_kind(name)
        own, base = times[name], times[kind]
        results.append(
            {
                "criterion": name,
                "class_aware": bool(criterion.class_aware),
                "selection_s": statistics.median(own),
                "selection_times_s": own,
                "plain_kind": kind,
                "plain_s": statistics.median(base),
                "paired_ratio": statistics.median(a / b for a, b in zip(own, base)),
                "ratio_of_minima": min(own) / min(base),
                "paired_ratio_to_forward": statistics.median(
                    a / b for a, b in zip(own, times["forward"])
                ),
            }
        )
    return results, plain


def time_plans(
    model: nn.Module,
    batches: Batches,
    target_rows: list[int],
    criterion_name: str,
    ratio: float,
    repeats: int,
) -> list[dict[str, Any]]:
    """Time ``make_plan`` for layer / global scope, unit ratio and ``target: macs``.

    The first call on a fresh copy of the model (cold: the dependency graph is traced and
    cached) is reported apart from the median of the following calls (warm).

    Args:
        model: The network in eval mode.
        batches: Calibration batches (for the criterion's scores and the example input).
        target_rows: Head row of each subset label (also the plan's head rows).
        criterion_name: The criterion whose scores are planned.
        ratio: Ratio of every plan.
        repeats: Warm timed calls per plan.

    Returns:
        One row per (scope, target).
    """
    criterion = get_criterion(criterion_name)
    example = batches[0][0][:1]
    out = []
    for scope in ("layer", "global"):
        for target in (None, "macs"):
            fresh = build_like(model)
            scores = select_scores(criterion, fresh, batches, target_rows)
            config = PruningConfig(ratio=ratio, scope=scope, target=target)

            def plan(
                fresh: nn.Module = fresh, scores: dict = scores, config: PruningConfig = config
            ) -> Any:
                return make_plan(fresh, criterion, scores, config, example, head_rows=target_rows)

            start = time.perf_counter()
            result = plan()
            cold = time.perf_counter() - start
            warm, times = median_seconds(plan, repeats, 0)
            out.append(
                {
                    "scope": scope,
                    "target": target,
                    "ratio": ratio,
                    "cold_s": cold,
                    "warm_s": warm,
                    "warm_times_s": times,
                    "macs_removed_fraction": result.report.get("macs_removed_fraction"),
                }
            )
    return out


def build_like(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode (no structure cached for it yet).

    Args:
        model: The network to copy.

    Returns:
        The copy.
    """
    return copy.deepcopy(model).eval()


def machine_note(threads: int) -> dict[str, Any]:
    """What the numbers were measured on.

    Args:
        threads: Torch intra-op threads used.

    Returns:
        CPU count, load averages, torch version and threads.
    """
    return {
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15": list(os.getloadavg()),
        "torch": torch.__version__,
        "threads": threads,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def print_tables(result: dict[str, Any]) -> None:
    """Print the selection and plan tables as markdown.

    Args:
        result: The dict written by ``--output``.
    """
    s = result["settings"]
    m = result["machine"]
    print(
        f"{s['network']} small_input={s['small_input']} input {s['input_shape']}, classes "
        f"{s['classes']}, {s['images']} calibration images in {s['batches']} batches of "
        f"<= {s['batch_size']}; median of {s['repeats']} after {s['warmup']} warm-up; "
        f"{m['threads']} threads; load avg {m['loadavg_1_5_15'][0]:.2f} (start) / "
        f"{result['loadavg_end'][0]:.2f} (end)"
    )
    print()
    print(
        "| criterion | selection s (median) | plain pass | plain s (median) | ratio (paired "
        "median) | ratio of minima | ratio to plain forward (paired) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in result["criteria"]:
        print(
            f"| {r['criterion']} | {r['selection_s']:.4f} | {r['plain_kind']} | "
            f"{r['plain_s']:.4f} | {r['paired_ratio']:.2f} | {r['ratio_of_minima']:.2f} | "
            f"{r['paired_ratio_to_forward']:.2f} |"
        )
    print()
    print(
        "plain passes: "
        + ", ".join(f"{k} {v['median_s']:.4f} s" for k, v in result["plain"].items())
    )
    print()
    print(f"make_plan ({s['plan_criterion']} scores, ratio {s['plan_ratio']}):")
    print()
    print("| scope | target | cold s (first call, traces) | warm s (median) | MACs removed |")
    print("|---|---|---:|---:|---:|")
    for p in result["plans"]:
        macs = p["macs_removed_fraction"]
        macs_text = f"{macs:.3f}" if macs is not None else "-"
        print(
            f"| {p['scope']} | {p['target'] or 'none'} | {p['cold_s']:.4f} | "
            f"{p['warm_s']:.4f} | {macs_text} |"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The parsed options.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="resnet18", help="resnet18 (default), resnet20, ...")
    parser.add_argument(
        "--no-small-input",
        dest="small_input",
        action="store_false",
        help="keep the ImageNet stem (default: small-input stem)",
    )
    parser.add_argument(
        "--classes", type=int, nargs="+", default=None, help="digit classes (default all ten)"
    )
    parser.add_argument(
        "--samples-per-class", type=int, default=16, help="calibration images per class"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="calibration batch size")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument(
        "--criteria", nargs="+", default=None, help="data-driven criteria to time (default all)"
    )
    parser.add_argument(
        "--plan-criterion", default="Taylor", help="criterion whose scores make_plan is timed with"
    )
    parser.add_argument("--plan-ratio", type=float, default=0.5)
    parser.add_argument("--plan-repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="data and init seed")
    parser.add_argument("--output", type=Path, default=None, help="also write JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print (and optionally write) the tables.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
    """
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = data_criteria(args.criteria)
    machine = machine_note(torch.get_num_threads())
    model, batches, target_rows, input_shape = build(args)
    start = time.perf_counter()
    criteria, plain = time_criteria(model, batches, target_rows, names, args.repeats, args.warmup)
    plans = time_plans(
        model, batches, target_rows, args.plan_criterion, args.plan_ratio, args.plan_repeats
    )
    result = {
        "settings": {
            "network": args.network,
            "small_input": args.small_input,
            "input_shape": list(input_shape),
            "classes": args.classes or "all",
            "samples_per_class": args.samples_per_class,
            "images": sum(b[0].shape[0] for b in batches),
            "batches": len(batches),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "plan_criterion": args.plan_criterion,
            "plan_ratio": args.plan_ratio,
            "plan_repeats": args.plan_repeats,
            "seed": args.seed,
        },
        "machine": machine,
        "criteria": criteria,
        "plain": plain,
        "plans": plans,
        "total_s": time.perf_counter() - start,
        "loadavg_end": list(os.getloadavg()),
    }
    print_tables(result)
    if args.output is not None:
        write_json_atomic(args.output, result)


if __name__ == "__main__":
    main()
