"""Sweep plots drawn from :func:`capl.sweep.summary.summarise`'s groups.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no display, no
global backend switch), rendered into memory and written atomically, so a crashed or concurrent
report never leaves a truncated PNG. Every function returns the list of files it wrote (empty
when the sweep holds nothing to draw).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from capl.benchmark.record import (
    THEORETICAL_SPEEDUP,
    TIMING_PHASES,
    measured_speedup_key,
    timing_key,
)
from capl.io import write_bytes_atomic

__all__ = [
    "PLOT_FILES",
    "plot_accuracy_vs_macs",
    "plot_all",
    "plot_overhead",
    "plot_per_layer",
    "plot_speedup",
]

DPI = 150

#: File names written by :func:`plot_all`.
PLOT_FILES = {
    "accuracy": "accuracy_vs_macs.png",
    "speedup": "speedup_measured_vs_theoretical.png",
    "per_layer": "per_layer_kept.png",
    "overhead": "overhead.png",
}

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_FIELDS = ("scope", "target", "classes", "retrain_epochs")

Group = Mapping[str, Any]


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return write_bytes_atomic(path, buffer.getvalue())


def _pruned(summary: Sequence[Group]) -> list[Group]:
    return [g for g in summary if g["criterion"] is not None and g["count"]]


def _varying(groups: Sequence[Group]) -> list[str]:
    return [f for f in _FIELDS if len({g[f] for g in groups}) > 1]


def _field_label(field: str, value: Any) -> str:
    if field == "retrain_epochs":
        return f"{value} ep"
    if field == "classes":
        return "classes " + str(value).replace(";", ",")
    return f"{field}={value}"


def _series(summary: Sequence[Group]) -> dict[str, list[Group]]:
    """Pruned groups per line: one per criterion and each varying setting, sorted by ratio."""
    groups = _pruned(summary)
    varying = _varying(groups)
    series: dict[str, list[Group]] = {}
    for g in groups:
        label = ", ".join([str(g["criterion"])] + [_field_label(f, g[f]) for f in varying])
        series.setdefault(label, []).append(g)
    for items in series.values():
        items.sort(key=lambda g: (g["ratio"] is None, g["ratio"] or 0))
    return series


def _colours(summary: Sequence[Group]) -> dict[str, Any]:
    """One colour per criterion, the same in every plot."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    names: dict[str, None] = {}
    for g in _pruned(summary):
        names.setdefault(str(g["criterion"]))
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _mean(group: Group, name: str) -> tuple[float | None, float]:
    stat = group["metrics"].get(name)
    if stat is None or stat["mean"] is None:
        return None, 0.0
    return stat["mean"], stat["std"] or 0.0


def plot_accuracy_vs_macs(summary: Sequence[Group], path: str | Path) -> list[Path]:
    """Accuracy at each stage vs realised reduction (see :mod:`capl.sweep.plot_accuracy`).

    Args:
        summary: Groups from :func:`capl.sweep.summary.summarise`.
        path: Destination PNG.

    Returns:
        ``[path]``, or ``[]`` when no pruned run succeeded.
    """
    from capl.sweep.plot_accuracy import plot_accuracy_vs_macs as draw

    return draw(summary, path, _colours(summary), _save)


def _speedup_keys(summary: Sequence[Group]) -> dict[str, list[str]]:
    """Backend -> batch labels with a measured speed-up, torch first."""
    keys: dict[str, set[str]] = {}
    for g in summary:
        for name in g["metrics"]:
            parts = name.split(".")
            if len(parts) == 4 and parts[:2] == ["realised", "measured_speedup"]:
                keys.setdefault(parts[2], set()).add(parts[3])
    order = sorted(keys, key=lambda b: (b != "torch", b))
    return {b: sorted(keys[b], key=lambda s: (len(s), s)) for b in order}


_SPEEDUP_TICKS = (0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
_EFFICIENCIES = (0.8, 0.5)


def _speedup_points(
    groups: Sequence[Group], criterion: str, backend: str, batch: str
) -> list[tuple[float, float, float]]:
    points = []
    for g in groups:
        if str(g["criterion"]) != criterion:
            continue
        x, _ = _mean(g, THEORETICAL_SPEEDUP)
        y, sy = _mean(g, measured_speedup_key(backend, batch))
        if x is not None and y is not None and x > 0 and y > 0:
            points.append((x, y, sy if g["count"] > 1 else 0.0))
    return points


def _log_speedup_axes(ax: Any, low: float, high: float) -> None:
    """Log-log axes over [low, high] with the identity and iso-efficiency lines, plain ticks."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    line = [low, high]
    ax.plot(line, line, color="black", linewidth=1, label="measured = theoretical")
    for efficiency, style in zip(_EFFICIENCIES, ("--", ":")):
        ax.plot(line, [efficiency * v for v in line], color="grey", linestyle=style,
                linewidth=1, label=f"efficiency {efficiency:g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    fine = [t for t in _SPEEDUP_TICKS if low <= t <= high]
    # a wide range gets powers of two only, so that labels do not overlap
    ticks = fine if high / low <= 8 else [2.0**k for k in range(-8, 9) if low <= 2.0**k <= high]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_minor_locator(NullLocator())
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_aspect("equal")


def plot_speedup(summary: Sequence[Group], path: str | Path) -> list[Path]:
    """Measured vs theoretical (MACs) speed-up on log-log axes, one subplot per backend.

    The identity line is a speed-up that delivers every removed MAC; the iso-lines at
    efficiency 0.8 and 0.5 (measured = efficiency x theoretical) show how much of it a plan
    kept. Colour is the criterion, marker the batch size; error bars (standard deviation over
    seeds) only where a point has several seeds. Measured speed-ups far above any theoretical
    one, or below 0.25x, are timing outliers of a busy machine: drawn at the edge and counted in
    the title.

    Args:
        summary: Groups from :func:`capl.sweep.summary.summarise`.
        path: Destination PNG.

    Returns:
        ``[path]``, or ``[]`` without measured speed-ups.
    """
    keys = _speedup_keys(summary)
    groups = _pruned(summary)
    if not keys or not groups:
        return []
    colours = _colours(summary)
    batches = sorted({b for bs in keys.values() for b in bs}, key=lambda b: (len(b), b))
    marker = {b: _MARKERS[i % len(_MARKERS)] for i, b in enumerate(batches)}
    theoretical = [v for g in groups if (v := _mean(g, THEORETICAL_SPEEDUP)[0])]
    ceiling = 2.0 * max([2.0, *theoretical])
    floor = 0.25  # a pruned network 4x slower than its base is a timing outlier too
    fig = Figure(figsize=(4.8 * len(keys) + 2.2, 5), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, (backend, backend_batches) in zip(axes, keys.items()):
        values, clipped = [1.0, *theoretical], 0
        for criterion, colour in colours.items():
            for batch in backend_batches:
                points = _speedup_points(groups, criterion, backend, batch)
                if not points:
                    continue
                xs, ys, errs = zip(*points)
                clipped += sum(not floor <= y <= ceiling for y in ys)
                errs = [0.0 if not floor <= y <= ceiling else e for y, e in zip(ys, errs)]
                ys = [min(max(y, floor), ceiling) for y in ys]
                values += [*ys, *xs]
                ax.errorbar(xs, ys, yerr=errs, color=colour,
                            marker=marker[batch], linestyle="none", capsize=3, markersize=6,
                            alpha=0.85)  # fmt: skip
        low = min(0.9, min(values) / 1.15)
        _log_speedup_axes(ax, low, max(values) * 1.15)
        title = f"{backend}: measured vs theoretical speed-up"
        if clipped:
            title += f"\n({clipped} timing outliers outside {floor:g}x-{ceiling:.0f}x at the edge)"
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("Theoretical speed-up (base MACs / pruned MACs)")
        ax.set_ylabel("Measured speed-up (base / pruned median latency)")
        ax.grid(True, which="major", alpha=0.3)
    handles = [
        Line2D([], [], color=c, marker="o", linestyle="none", label=n) for n, c in colours.items()
    ]
    handles += [
        Line2D([], [], color="grey", marker=m, linestyle="none",
               label=f"batch {b[2:]}" if b.startswith("bs") else b)
        for b, m in marker.items()
    ]  # fmt: skip
    handles += axes[0].get_legend_handles_labels()[0][:3]
    fig.legend(handles=handles, fontsize="small", loc="outside right upper")
    return [_save(fig, path)]


def _per_layer_budget(groups: Sequence[Group]) -> tuple[tuple, list[Group]]:
    """The budget (target, ratio, classes) most criteria share, nearest 0.5; one group each."""
    budgets: dict[tuple, dict[str, Group]] = {}
    for g in sorted(groups, key=lambda g: int(g["retrain_epochs"] or 0)):
        if g["per_layer"]:
            key = (g["target"], g["ratio"], g["classes"])
            budgets.setdefault(key, {}).setdefault(f"{g['criterion']}|{g['scope']}", g)
    key = min(budgets, key=lambda k: (-len(budgets[k]), abs((k[1] or 0) - 0.5), str(k)))
    return key, list(budgets[key].values())


def plot_per_layer(summary: Sequence[Group], path: str | Path) -> list[Path]:
    """Share of channels (masks: non-zero weights) kept per layer, one panel per criterion.

    All panels show one budget, the one most criteria were run at (ratio nearest 0.5 on a tie),
    so that they compare; the other budgets are in ``summary.csv``. Layers are in network order.

    Args:
        summary: Groups from :func:`capl.sweep.summary.summarise` (their ``per_layer`` field).
        path: Destination PNG.

    Returns:
        ``[path]``, or ``[]`` without per-layer data.
    """
    groups = [g for g in _pruned(summary) if g["per_layer"]]
    if not groups:
        return []
    (target, ratio, classes), panels = _per_layer_budget(groups)
    scopes = len({g["scope"] for g in panels}) > 1
    colours = _colours(summary)
    names = list(dict.fromkeys(n for g in panels for n in g["per_layer"]))
    ncols = 1 if len(panels) == 1 or len(names) > 30 else 2
    nrows = math.ceil(len(panels) / ncols)
    width = min(max(5.5, 0.2 * len(names) + 1.5), 13.0)
    label_in = 0.075 * max(len(n) for n in names)  # rotated layer names under the last row
    fig = Figure(figsize=(width * ncols, 1.9 * nrows + label_in + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    positions = list(range(len(names)))
    for ax, g in zip(axes.flat, panels):
        kept = [g["per_layer"].get(n, {}).get("mean") for n in names]
        ax.bar(positions, [0 if k is None else 100 * k for k in kept], width=0.8,
               color=colours.get(str(g["criterion"]), "tab:blue"))  # fmt: skip
        label = f"{g['criterion']} ({g['scope']})" if scopes else str(g["criterion"])
        ax.set_title(label, fontsize="medium", loc="left")
        ax.set_ylim(0, 105)
        ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
        ax.grid(True, axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("Kept")
    fontsize = "x-small" if len(names) > 24 else "small"
    for ax in list(axes.flat)[: len(panels)]:
        ax.set_xticks(positions)
        ax.tick_params(labelbottom=False)
    for col in range(ncols):  # the lowest panel of each column names the layers
        last = max(r for r in range(nrows) if r * ncols + col < len(panels))
        axes[last, col].set_xticklabels(names, rotation=90, fontsize=fontsize)
        axes[last, col].tick_params(labelbottom=True)
    budget = f"{100 * ratio:g} % of the {target} removed" if target and ratio else (
        f"ratio {ratio:g}" if ratio is not None else "one budget")  # fmt: skip
    if classes is not None and len({g["classes"] for g in groups}) > 1:
        budget += f", classes {str(classes).replace(';', ', ')}"
    fig.suptitle(f"Share kept per layer (channels; non-zero weights for masks) at {budget}")
    return [_save(fig, path)]


def _timing_names(summary: Sequence[Group]) -> list[str]:
    names = {
        name.split(".", 1)[1]
        for g in summary
        for name in g["metrics"]
        if name.startswith("timings_s.")
    }
    return [n for n in TIMING_PHASES if n in names] + sorted(names.difference(TIMING_PHASES))


def plot_overhead(summary: Sequence[Group], path: str | Path) -> list[Path]:
    """Preparation time per criterion, stacked by phase (selection, removal, retraining).

    Each bar is the mean over all successful runs of one criterion (all ratios and seeds; for
    selection only the runs that computed their scores rather than reading them from the
    cache), so criteria compare at a glance; the report's overhead table has the per-ratio
    values.

    Args:
        summary: Groups from :func:`capl.sweep.summary.summarise`.
        path: Destination PNG.

    Returns:
        ``[path]``, or ``[]`` without timings.
    """
    phases = _timing_names(summary)
    series = _series(summary)
    if not phases or not series:
        return []
    labels = list(series)
    means = []
    for groups in series.values():
        row = []
        for phase in phases:
            stats = [g["metrics"].get(timing_key(phase)) or {} for g in groups]
            pairs = [(st["mean"], st["count"]) for st in stats if st.get("count")]
            total = sum(n for _, n in pairs)
            row.append(sum(m * n for m, n in pairs) / total if total else 0.0)
        means.append(row)
    from matplotlib import colormaps

    cmap = colormaps["Set2"]
    fig = Figure(figsize=(8, max(3.0, 0.45 * len(labels) + 1.6)), layout="constrained")
    ax = fig.add_subplot()
    positions = list(range(len(labels)))
    left = [0.0] * len(labels)
    for i, phase in enumerate(phases):
        widths = [row[i] for row in means]
        ax.barh(positions, widths, left=left, color=cmap(i % 8), label=phase, height=0.65)
        left = [a + w for a, w in zip(left, widths)]
    for y, total in zip(positions, left):
        ax.text(total, y, f"  {total:.2f} s", va="center", fontsize="small")
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.2 if max(left) > 0 else 1)
    ax.set_xlabel("Time (s), mean over ratios and seeds")
    ax.set_title("Preparation overhead per criterion")
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(title="phase", fontsize="small", loc="outside right upper")
    return [_save(fig, path)]


def plot_all(summary: Sequence[Group], folder: str | Path) -> list[Path]:
    """Draw every plot into ``folder`` (names in :data:`PLOT_FILES`).

    Args:
        summary: Groups from :func:`capl.sweep.summary.summarise`.
        folder: Output folder.

    Returns:
        The written PNG files.
    """
    folder = Path(folder)
    written: list[Path] = []
    written += plot_accuracy_vs_macs(summary, folder / PLOT_FILES["accuracy"])
    written += plot_speedup(summary, folder / PLOT_FILES["speedup"])
    written += plot_per_layer(summary, folder / PLOT_FILES["per_layer"])
    written += plot_overhead(summary, folder / PLOT_FILES["overhead"])
    return written
