"""``accuracy_vs_macs.png``: accuracy at each stage against what the pruning removed.

One column of panels per accuracy stage (right after removal, after BatchNorm recalibration,
after retraining; only the stages the sweep measured) and one row per kind of criterion:
structured criteria against the dense MACs removed, mask criteria (which keep every dense MAC)
against the non-zero parameters removed, on their own axis instead of a column of points at 0 %.
Colour is the criterion, the same in every panel; in the retrained panels the line style is the
retraining budget. Every panel shows the base model's accuracy and the chance level of the
task. Error bars (standard deviation over seeds) appear only where a point has several seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

__all__ = ["plot_accuracy_vs_macs"]

Group = Mapping[str, Any]

_STAGES = (
    ("pruned", "right after removal"),
    ("bn_recalibrated", "after BatchNorm recalibration"),
    ("retrained", "after retraining"),
)
_DASHES = ("-", "--", ":", "-.")
_FAMILIES = (
    (False, "Structured criteria", "realised.macs_removed", "MACs removed (%)"),
    (True, "Mask criteria (dense MACs unchanged)", "realised.nonzero_params_removed",
     "Non-zero parameters removed (%)"),
)  # fmt: skip


def _stat(group: Group, name: str) -> tuple[float | None, float | None]:
    stat = group["metrics"].get(name)
    return (None, None) if stat is None else (stat["mean"], stat["std"])


def _stage_key(stage: str) -> str:
    return f"accuracy_stages.{stage}.accuracy"


def _stages(groups: Sequence[Group]) -> list[tuple[str, str]]:
    found = [s for s in _STAGES if any(_stat(g, _stage_key(s[0]))[0] is not None for g in groups)]
    return found or [("after", "after pruning")]  # results from before accuracy stages


def _accuracy(group: Group, stage: str) -> tuple[float | None, float | None]:
    return _stat(group, "after.accuracy" if stage == "after" else _stage_key(stage))


def _reference(groups: Sequence[Group], name: str) -> float | None:
    values = [v for g in groups if (v := _stat(g, name)[0]) is not None]
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
        x, sx = _stat(g, x_name)
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


def plot_accuracy_vs_macs(
    summary: Sequence[Group],
    path: str | Path,
    colours: Mapping[str, Any],
    save: Callable[[Figure, str | Path], Path],
) -> list[Path]:
    """Draw the figure described in the module docstring.

    Args:
        summary: Groups from :func:`capl.sweep.report.summarise`.
        path: Destination PNG.
        colours: Criterion name -> colour (shared with the other plots).
        save: Writes a figure to a path (atomically) and returns the path.

    Returns:
        ``[path]``, or ``[]`` when no pruned run succeeded.
    """
    groups = [g for g in summary if g["strategy"] is not None and g["count"]]
    families = [f for f in _FAMILIES if any(bool(g.get("masked")) == f[0] for g in groups)]
    if not groups or not families:
        return []
    stages = _stages(groups)
    scopes = len({g["scope"] for g in groups}) > 1

    def label(g: Group) -> str:
        return f"{g['strategy']} ({g['scope']})" if scopes else str(g["strategy"])

    budgets = sorted({int(g["retrain_epochs"] or 0) for g in groups} - {0})
    dash = {e: _DASHES[i % len(_DASHES)] for i, e in enumerate(budgets)}
    base = _reference(groups, _stage_key("base")) or _reference(groups, "before.accuracy")
    chance = _reference(groups, "accuracy_stages.chance")
    seeds = max(g["count"] for g in groups)
    fig = Figure(figsize=(4.3 * len(stages) + 2.2, 3.6 * len(families) + 0.8), layout="constrained")
    axes = fig.subplots(len(families), len(stages), squeeze=False, sharey=True)
    for row, (masked, family, x_name, x_label) in enumerate(families):
        members = [g for g in groups if bool(g.get("masked")) == masked]
        for col, (stage, stage_title) in enumerate(stages):
            ax = axes[row, col]
            for (name, epochs), pts in _lines(members, stage, x_name, label).items():
                xs, ys, sxs, sys_ = zip(*pts)
                ax.errorbar(
                    xs, ys,
                    xerr=sxs if seeds > 1 else None, yerr=sys_ if seeds > 1 else None,
                    color=colours.get(name.split(" (")[0], "black"), marker="o", markersize=4,
                    linestyle=dash.get(epochs, "-"), capsize=2, linewidth=1.4,
                )  # fmt: skip
            if base is not None:
                ax.axhline(100 * base, color="black", linestyle="--", linewidth=1)
            if chance is not None:
                ax.axhline(100 * chance, color="grey", linestyle=":", linewidth=1.2)
            ax.set_title(f"{family}\n{stage_title}", fontsize="medium")
            ax.set_xlabel(x_label)
            ax.set_ylim(0, 102)
            ax.xaxis.set_major_formatter(PercentFormatter(100, decimals=0))
            ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
            ax.grid(True, alpha=0.3)
        axes[row, 0].set_ylabel("Accuracy on the selected classes")
    names = list(dict.fromkeys(label(g) for g in groups))
    handles = [
        Line2D([], [], color=colours.get(n.split(" (")[0], "black"), marker="o", label=n)
        for n in names
    ]
    handles += [Line2D([], [], color="black", linestyle="--", label="base model")]
    handles += [Line2D([], [], color="grey", linestyle=":", label="chance")]
    if any(s == "retrained" for s, _ in stages):
        handles += [
            Line2D([], [], color="dimgrey", linestyle=dash[e], label=f"retrained {e} epoch(s)")
            for e in budgets
        ]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small",
               title="colour: criterion\nline style: retraining")  # fmt: skip
    spread = f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""
    fig.suptitle(f"Accuracy at each stage vs what the pruning removed{spread}")
    return [save(fig, path)]
