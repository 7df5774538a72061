"""``accuracy_vs_macs.png``: accuracy at each stage against what the pruning removed.

One column of panels per accuracy stage (right after removal, after BatchNorm recalibration,
after retraining; only the stages the sweep measured) and one row per kind of criterion:
structured criteria against the dense MACs removed, mask criteria (which keep every dense MAC)
against the non-zero parameters removed, on their own axis instead of a column of points at 0 %.
A sweep over several class subsets gets one row per kind of criterion and subset, each with
that subset's own base model and chance level (one line averaged over the subsets would hide,
for instance, how a criterion fares on similar vs distinct classes). Colour is the criterion,
the same in every panel; in the retrained panels the line style is the retraining budget. Every
panel shows the base model's accuracy and the chance level of the task. Error bars (standard
deviation over seeds) appear only where a point has several seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from capl.benchmark.record import (
    ACCURACY_AFTER,
    ACCURACY_BEFORE,
    CHANCE,
    MACS_REMOVED,
    NONZERO_PARAMS_REMOVED,
    stage_accuracy_key,
)
from capl.sweep.formatting import stat_of

__all__ = ["BASE_LABEL", "CHANCE_LABEL", "plot_accuracy_vs_macs"]

Group = Mapping[str, Any]

_STAGES = (
    ("pruned", "right after removal"),
    ("bn_recalibrated", "after BatchNorm recalibration"),
    ("retrained", "after retraining"),
)
_DASHES = ("-", "--", ":", "-.")
_FAMILIES = (
    (False, "Structured criteria", MACS_REMOVED, "MACs removed (%)"),
    (True, "Mask criteria (dense MACs unchanged)", NONZERO_PARAMS_REMOVED,
     "Non-zero parameters removed (%)"),
)  # fmt: skip
BASE_LABEL = "base model"
CHANCE_LABEL = "chance"


def _stages(groups: Sequence[Group]) -> list[tuple[str, str]]:
    found = [
        s
        for s in _STAGES
        if any(stat_of(g, stage_accuracy_key(s[0]))[0] is not None for g in groups)
    ]
    return found or [("after", "after pruning")]  # results from before accuracy stages


def _accuracy(group: Group, stage: str) -> tuple[float | None, float | None]:
    return stat_of(group, ACCURACY_AFTER if stage == "after" else stage_accuracy_key(stage))


def _reference(groups: Sequence[Group], name: str) -> float | None:
    values = [v for g in groups if (v := stat_of(g, name)[0]) is not None]
    return sum(values) / len(values) if values else None


def _lines(
    groups: Sequence[Group], stage: str, x_name: str, label: Callable[[Group], str]
) -> dict[tuple[str, int], list[tuple[float, float, float, float]]]:
    """``(criterion label, retrain epochs) -> [(x, y, x std, y std)]`` sorted by x.

    Before retraining the budget does not matter (the same pruned network): groups that differ
    only in retraining epochs are one line there, keyed with epochs 0.
    """
    points: dict[tuple[str, int], dict[Any, tuple[float, float, float, float]]] = {}
    for g in groups:
        epochs = int(g["retrain_epochs"] or 0)
        if stage == "retrained" and epochs == 0:
            continue
        x, sx = stat_of(g, x_name)
        y, sy = _accuracy(g, stage)
        if x is None or y is None:
            continue
        key = (label(g), epochs if stage == "retrained" else 0)
        points.setdefault(key, {}).setdefault(g["ratio"], (100 * x, 100 * y, sx, sy))
    out = {}
    for key, by_ratio in points.items():
        out[key] = sorted(
            ((x, y, 100 * (sx or 0.0), 100 * (sy or 0.0)) for x, y, sx, sy in by_ratio.values()),
        )
    return out


@dataclass(frozen=True)
class _Row:
    """One row of panels: a kind of criterion on one class subset, with its reference lines."""

    title: str
    x_name: str
    x_label: str
    members: list[Group]
    base: float | None
    chance: float | None


def _subset_label(classes: Any) -> str:
    return "classes " + str(classes).replace(";", ", ")


def _rows(groups: Sequence[Group]) -> list[_Row]:
    """Panel rows: each kind of criterion, split by class subset when there are several.

    Each row's base and chance lines are those of its class subset (a subset's base model and
    task), so that e.g. similar and distinct subsets are not averaged into one line.
    """
    subsets = list(dict.fromkeys(g["classes"] for g in groups))
    rows = []
    for masked, family, x_name, x_label in _FAMILIES:
        for classes in subsets:
            task = [g for g in groups if g["classes"] == classes]
            members = [g for g in task if bool(g.get("masked")) == masked]
            if not members:
                continue
            title = family if len(subsets) == 1 else f"{family}, {_subset_label(classes)}"
            base = _reference(task, stage_accuracy_key("base")) or _reference(task, ACCURACY_BEFORE)
            rows.append(_Row(title, x_name, x_label, members, base, _reference(task, CHANCE)))
    return rows


def _draw_panel(
    ax: Any,
    row: _Row,
    stage: tuple[str, str],
    label: Callable[[Group], str],
    style: Mapping[str, Any],
) -> None:
    """One panel: a line per criterion (and retraining budget), the base and chance lines."""
    seeds = style["seeds"]
    for (name, epochs), pts in _lines(row.members, stage[0], row.x_name, label).items():
        xs, ys, sxs, sys_ = zip(*pts)
        ax.errorbar(
            xs, ys,
            xerr=sxs if seeds > 1 else None, yerr=sys_ if seeds > 1 else None,
            color=style["colours"].get(name.split(" (")[0], "black"), marker="o", markersize=4,
            linestyle=style["dash"].get(epochs, "-"), capsize=2, linewidth=1.4, label=name,
        )  # fmt: skip
    if row.base is not None:
        ax.axhline(100 * row.base, color="black", linestyle="--", linewidth=1, label=BASE_LABEL)
    if row.chance is not None:
        ax.axhline(100 * row.chance, color="grey", linestyle=":", linewidth=1.2,
                   label=CHANCE_LABEL)  # fmt: skip
    ax.set_title(f"{row.title}\n{stage[1]}", fontsize="medium")
    ax.set_xlabel(row.x_label)
    ax.set_ylim(0, 102)
    ax.xaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax.grid(True, alpha=0.3)


def _legend(
    fig: Figure,
    names: Sequence[str],
    colours: Mapping[str, Any],
    dash: Mapping[int, str],
    retrained: bool,
) -> None:
    handles = [
        Line2D([], [], color=colours.get(n.split(" (")[0], "black"), marker="o", label=n)
        for n in names
    ]
    handles += [Line2D([], [], color="black", linestyle="--", label=BASE_LABEL)]
    handles += [Line2D([], [], color="grey", linestyle=":", label=CHANCE_LABEL)]
    if retrained:
        handles += [
            Line2D([], [], color="dimgrey", linestyle=d, label=f"retrained {e} epoch(s)")
            for e, d in dash.items()
        ]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small",
               title="colour: criterion\nline style: retraining")  # fmt: skip


def plot_accuracy_vs_macs(
    summary: Sequence[Group],
    path: str | Path,
    colours: Mapping[str, Any],
    save: Callable[[Figure, str | Path], Path],
) -> list[Path]:
    """Draw the figure described in the module docstring.

    Args:
        summary: Groups from :func:`capl.sweep.summary.summarise`.
        path: Destination PNG.
        colours: Criterion name -> colour (shared with the other plots).
        save: Writes a figure to a path (atomically) and returns the path.

    Returns:
        ``[path]``, or ``[]`` when no pruned run succeeded.
    """
    groups = [g for g in summary if g["criterion"] is not None and g["count"]]
    rows = _rows(groups)
    if not rows:
        return []
    stages = _stages(groups)
    scopes = len({g["scope"] for g in groups}) > 1

    def label(g: Group) -> str:
        return f"{g['criterion']} ({g['scope']})" if scopes else str(g["criterion"])

    budgets = sorted({int(g["retrain_epochs"] or 0) for g in groups} - {0})
    dash = {e: _DASHES[i % len(_DASHES)] for i, e in enumerate(budgets)}
    seeds = max(g["count"] for g in groups)
    style = {"colours": colours, "dash": dash, "seeds": seeds}
    fig = Figure(figsize=(4.3 * len(stages) + 2.2, 3.6 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), len(stages), squeeze=False, sharey=True)
    for i, row in enumerate(rows):
        for j, stage in enumerate(stages):
            _draw_panel(axes[i, j], row, stage, label, style)
        axes[i, 0].set_ylabel("Accuracy on the selected classes")
    names = list(dict.fromkeys(label(g) for g in groups))
    _legend(fig, names, colours, dash, any(s == "retrained" for s, _ in stages))
    spread = f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""
    fig.suptitle(f"Accuracy at each stage vs what the pruning removed{spread}")
    return [save(fig, path)]
