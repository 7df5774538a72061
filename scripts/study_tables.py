"""Markdown tables of a class-subset study from a sweep's results.csv (mean ± std over seeds).

    python scripts/study_tables.py runs/fashion/results.csv > tables.md

One table per class subset: rows criterion x budget; columns accuracy at each stage, realised
MACs removed, measured speed-up and efficiency per backend and batch size, selection time.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from capl.benchmark.record import (
    CHANCE,
    CRITERION_NAME,
    MACS_REMOVED,
    SELECTION_TIME,
    efficiency_key,
    measured_speedup_key,
    stage_accuracy_key,
)
from capl.sweep.formatting import format_percent, format_speedup
from capl.sweep.rows import normalise_row, read_results_csv

STAGES = ("pruned", "bn_recalibrated", "retrained")
SPEEDUPS = [(b, n) for b in ("torch", "onnxruntime") for n in ("bs1", "bs32")]


def _stat(values: Iterable[Any]) -> tuple[float | None, float | None, int]:
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    if not numbers:
        return None, None, 0
    std = statistics.stdev(numbers) if len(numbers) > 1 else None
    return statistics.fmean(numbers), std, len(numbers)


def _subset(row: Mapping[str, Any], names: Mapping[str, str]) -> str:
    indices = str(row.get("classes.indices"))  # results.csv joins lists with ";"
    return names.get(indices, indices)


def _groups(rows: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    out: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("status") == "ok":
            key = (row.get(CRITERION_NAME), row.get("target"), row.get("ratio"))
            out[key].append(row)
    return out


def table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The Markdown lines of one subset's table."""
    head = ["criterion", "budget", "n", "pruned %", "BN-recal. %", "retrained %", "MACs cut %"]
    head += [f"{b} {n}" for b, n in SPEEDUPS] + ["eff. ORT bs32", "eff. torch bs32"]
    head += ["selection s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (name, target, ratio), group in sorted(
        _groups(rows).items(), key=lambda kv: (str(kv[0][0]), kv[0][2] or 0)
    ):
        cells = [str(name), f"{ratio:.0%} {'MACs' if target == 'macs' else 'weights'}"]
        cells.append(str(len(group)))
        for stage in STAGES:
            mean, std, _ = _stat(r.get(stage_accuracy_key(stage)) for r in group)
            cells.append(format_percent(mean, std, 1))
        mean, _, _ = _stat(r.get(MACS_REMOVED) for r in group)
        cells.append(format_percent(mean, None, 1))
        for backend, batch in SPEEDUPS:
            mean, std, _ = _stat(r.get(measured_speedup_key(backend, batch)) for r in group)
            cells.append(format_speedup(mean, std))
        for backend in ("onnxruntime", "torch"):
            mean, _, _ = _stat(r.get(efficiency_key(backend, "bs32")) for r in group)
            cells.append("-" if mean is None else f"{mean:.2f}")
        # scores are computed once per criterion, subset and seed and reused across budgets
        computed = [r for r in group if r.get("scores_cached") is not True]
        mean, _, _ = _stat(r.get(SELECTION_TIME) for r in computed)
        cells.append("-" if mean is None else f"{mean:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument(
        "--subset",
        action="append",
        default=["similar=0;2;4;6", "distinct=1;3;7;8"],
        help="NAME=i;j;k labels for class subsets (results.csv's spelling of the indices)",
    )
    args = parser.parse_args()
    names = {}
    for item in args.subset:
        label, _, indices = item.partition("=")
        names[indices.replace(" ", "")] = label
    rows = [normalise_row(row) for row in read_results_csv(args.results)]  # old: "strategy"
    by_subset: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_subset[_subset(row, names)].append(row)
    for subset, subset_rows in by_subset.items():
        base, base_std, _ = _stat(r.get(stage_accuracy_key("base")) for r in subset_rows)
        chance, _, _ = _stat(r.get(CHANCE) for r in subset_rows)
        print(
            f"### {subset}: base {format_percent(base, base_std, 2)} %, chance "
            f"{format_percent(chance, None, 1)} %\n"
        )
        print("\n".join(table(subset_rows)) + "\n")


if __name__ == "__main__":
    main()
