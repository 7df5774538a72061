"""The answer a sweep was run for, first: criteria side by side at each equal budget.

``report.md`` opens with :func:`render_answer`: the base model and the chance level of the task,
then one table per budget (target and ratio, per class subset) with a row per criterion (and
scope or retraining budget where those differ), ranked by the accuracy of the last stage
measured: accuracy at each stage (base, right after removal, after BatchNorm recalibration,
after retraining), the MACs and non-zero parameters removed, the theoretical speed-up, the
measured speed-up per backend and batch size, and the efficiency (measured / theoretical) at
each backend's largest batch. Values are means over seeds, ``± std`` only with several seeds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from capl.benchmark.record import (
    ACCURACY_AFTER,
    ACCURACY_BEFORE,
    CHANCE,
    MACS_REMOVED,
    NONZERO_PARAMS_REMOVED,
    THEORETICAL_SPEEDUP,
    efficiency_key,
    measured_speedup_key,
    stage_accuracy_key,
)
from capl.sweep.formatting import NA, format_percent, format_speedup, markdown_table, stat_of
from capl.sweep.rows import natural_key

__all__ = ["STAGES", "render_answer"]

#: ``accuracy_stages`` entries in the order a pruned network goes through them.
STAGES: tuple[tuple[str, str], ...] = (
    ("base", "Base"),
    ("pruned", "Pruned"),
    ("bn_recalibrated", "BN recal."),
    ("retrained", "Retrained"),
)
Group = Mapping[str, Any]


def _pairs(groups: Iterable[Group], family: str) -> list[tuple[str, str]]:
    """``(backend, batch)`` with a ``realised.<family>`` value, torch first, batches in order."""
    found = set()
    for g in groups:
        for name, stat in g["metrics"].items():
            match = re.match(rf"^realised\.{family}\.([^.]+)\.([^.]+)$", name)
            if match and stat.get("mean") is not None:
                found.add((match[1], match[2]))
    return sorted(found, key=lambda p: (p[0] != "torch", p[0], natural_key(p[1])))


def _budget_title(target: Any, ratio: Any, classes: Any, many_classes: bool) -> str:
    if ratio is None:
        text = "Budget: unknown ratio"
    elif target:
        text = f"Budget: {100 * ratio:g} % of the {target} removed (measured on the network)"
    else:
        text = (
            f"Budget: ratio {ratio:g} (of the prunable filters, or of the weights for mask "
            "criteria; the MACs removed differ by criterion)"
        )
    if many_classes and classes is not None:
        text += f", classes {str(classes).replace(';', ', ')}"
    return text


def _task_lines(groups: Sequence[Group], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The base model and chance level, per class subset."""
    model = next((r.get("model") for r in rows if r.get("model")), None)
    dataset = next((r.get("dataset") for r in rows if r.get("dataset")), None)
    lines = []
    per_classes: dict[Any, list[Group]] = {}
    for g in groups:
        per_classes.setdefault(g["classes"], []).append(g)
    for classes, members in per_classes.items():
        base = [v for g in members if (v := stat_of(g, stage_accuracy_key("base"))[0])]
        base = base or [v for g in members if (v := stat_of(g, ACCURACY_BEFORE)[0])]
        chance = next((v for g in members if (v := stat_of(g, CHANCE)[0]) is not None), None)
        where = f"{model or 'the model'} on {dataset or 'the data'}"
        if classes is not None:
            where += f", classes {str(classes).replace(';', ', ')}"
        acc = format_percent(sum(base) / len(base)) + " %" if base else NA
        k = f" ({round(1 / chance)}-way task)" if chance else ""
        odds = f"; chance level {format_percent(chance)} %" if chance else ""
        lines.append(f"- Base model: {where}: accuracy {acc}{k}{odds}.")
    return lines


def _has(groups: Iterable[Group], name: str) -> bool:
    return any(stat_of(g, name)[0] is not None for g in groups)


def _columns(pruned: Sequence[Group]) -> tuple[list[str], list[int], list, dict[str, str]]:
    """Stage keys before retraining, retraining budgets, measured pairs, efficiency pairs."""
    before = [k for k, _ in STAGES[:-1] if _has(pruned, stage_accuracy_key(k))]
    budgets = []
    for epochs in sorted({int(g["retrain_epochs"] or 0) for g in pruned} - {0}):
        trained = [g for g in pruned if int(g["retrain_epochs"] or 0) == epochs]
        if _has(trained, stage_accuracy_key("retrained")):
            budgets.append(epochs)
    largest: dict[str, str] = {}
    for backend, batch in _pairs(pruned, "efficiency"):
        largest[backend] = batch  # pairs come in batch order: the last one is the largest
    return before, budgets, _pairs(pruned, "measured_speedup"), largest


def _row(
    groups: Sequence[Group], label: str, columns: tuple[list[str], list[int], list, dict]
) -> tuple[float, list[str]]:
    """One criterion's cells (groups: its retraining budgets) and its ranking accuracy."""
    before, budgets, measured, largest = columns
    by_epochs = {int(g["retrain_epochs"] or 0): g for g in groups}
    # the network is the same for every budget: its measurements come from the point with the
    # fewest retraining epochs (the one whose "after" is the pruned network, where there is one)
    first = by_epochs[min(by_epochs)]
    cells = [label]
    cells += [format_percent(*stat_of(first, stage_accuracy_key(k))) for k in before]
    final = None
    for epochs in budgets:
        group = by_epochs.get(epochs)
        value = stat_of(group, stage_accuracy_key("retrained")) if group else (None, None)
        final = value[0] if value[0] is not None else final
        cells.append(format_percent(*value))
    if final is None:
        final = next(
            (
                v
                for k in reversed(before)
                if (v := stat_of(first, stage_accuracy_key(k))[0]) is not None
            ),
            stat_of(first, ACCURACY_AFTER)[0],
        )
    cells += [
        format_percent(*stat_of(first, MACS_REMOVED), digits=1),
        format_percent(*stat_of(first, NONZERO_PARAMS_REMOVED), digits=1),
        format_speedup(*stat_of(first, THEORETICAL_SPEEDUP)),
    ]
    cells += [format_speedup(*stat_of(first, measured_speedup_key(b, bs))) for b, bs in measured]
    cells += [_efficiency(*stat_of(first, efficiency_key(b, bs))) for b, bs in largest.items()]
    return (-1.0 if final is None else final), cells


def render_answer(summary: Sequence[Group], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines of the answer section (empty when no pruned run succeeded).

    Args:
        summary: Groups from :func:`capl.sweep.summary.summarise`.
        rows: The normalised ``results.csv`` rows (model and dataset names).

    Returns:
        Lines ending with a blank line.
    """
    pruned = [g for g in summary if g["criterion"] is not None and g["count"]]
    if not pruned:
        return []
    columns = _columns(pruned)
    before, budgets, measured, largest = columns
    titles = dict(STAGES)
    header = ["Criterion"] + [f"{titles[k]} acc. (%)" for k in before]
    header += [f"Retrained {e} ep acc. (%)" for e in budgets]
    header += ["MACs removed (%)", "Non-zero params removed (%)", "Theoretical speed-up"]
    header += [f"Measured {b} {bs}" for b, bs in measured]
    header += [f"Efficiency {b} {bs}" for b, bs in largest.items()]
    many_classes = len({g["classes"] for g in pruned}) > 1
    scopes = len({g["scope"] for g in pruned}) > 1
    tables: dict[tuple, dict[str, list[Group]]] = {}
    for g in pruned:
        label = f"{g['criterion']} ({g['scope']})" if scopes else str(g["criterion"])
        key = (g["target"], g["ratio"], g["classes"])
        tables.setdefault(key, {}).setdefault(label, []).append(g)

    seeds = max(g["count"] for g in pruned)
    out = ["## Answer: criteria at equal budgets", ""]
    out += _task_lines(pruned, rows)
    out += [
        "",
        "Accuracy on the selected classes at each stage (base model; right after removal; after "
        "BatchNorm recalibration; after each retraining budget), best final accuracy first; "
        "MACs, parameters and speed-ups are those of the pruned network (base / pruned median "
        "latency); efficiency is measured / theoretical speed-up. "
        + ("Mean ± std over seeds." if seeds > 1 else "One run per point (no spread)."),
        "",
    ]
    for (target, ratio, classes), criteria in sorted(
        tables.items(), key=lambda item: (str(item[0][0]), item[0][1] or 0, str(item[0][2]))
    ):
        ranked = sorted(
            (_row(gs, label, columns) for label, gs in criteria.items()),
            key=lambda r: r[0],
            reverse=True,
        )
        out += [f"### {_budget_title(target, ratio, classes, many_classes)}", ""]
        out += [markdown_table(header, [cells for _, cells in ranked]), ""]
    return out


def _efficiency(value: float | None, std: float | None) -> str:
    if value is None:
        return NA
    return f"{value:.2f}" + ("" if std is None else f" ± {std:.2f}")
