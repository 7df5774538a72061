"""Sweep plots drawn from :func:`capl.sweep.report.summarise`'s groups.

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
_TIMING_ORDER = ("selection", "removal", "retraining")
_FIELDS = ("scope", "target", "classes", "retrain_epochs")

Group = Mapping[str, Any]


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return write_bytes_atomic(path, buffer.getvalue())


def _pruned(summary: Sequence[Group]) -> list[Group]:
    return [g for g in summary if g["strategy"] is not None and g["count"]]


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
        label = ", ".join([str(g["strategy"])] + [_field_label(f, g[f]) for f in varying])
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
        names.setdefault(str(g["strategy"]))
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _line_styles(series: Mapping[str, Sequence[Group]]) -> dict[str, tuple[Any, str, str]]:
    """Colour by criterion; marker and dash by the other varying settings."""
    styles = {}
    variant: dict[str, int] = {}
    for label, groups in series.items():
        strategy = str(groups[0]["strategy"])
        k = variant.get(strategy, 0)
        variant[strategy] = k + 1
        styles[label] = (_MARKERS[k % len(_MARKERS)], ("-", "--", ":", "-.")[k % 4])
    return styles


def _mean(group: Group, name: str) -> tuple[float | None, float]:
    stat = group["metrics"].get(name)
    if stat is None or stat["mean"] is None:
        return None, 0.0
    return stat["mean"], stat["std"] or 0.0


def plot_accuracy_vs_macs(summary: Sequence[Group], path: str | Path) -> list[Path]:
    """Accuracy after pruning vs realised MACs reduction, one line per criterion.

    Error bars are the standard deviation over seeds; dashed horizontal lines mark the base
    accuracy (from unpruned runs, else the pruned runs' accuracy before pruning).

    Args:
        summary: Groups from :func:`capl.sweep.report.summarise`.
        path: Destination PNG.

    Returns:
        ``[path]``, or ``[]`` when no pruned run succeeded.
    """
    series = _series(summary)
    if not series:
        return []
    colours, styles = _colours(summary), _line_styles(series)
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    for label, groups in series.items():
        xs, ys, xerr, yerr = [], [], [], []
        for g in groups:
            x, sx = _mean(g, "realised.macs_removed")
            y, sy = _mean(g, "after.accuracy")
            if x is None or y is None:
                continue
            xs.append(100 * x)
            ys.append(100 * y)
            xerr.append(100 * sx)
            yerr.append(100 * sy)
        if not xs:
            continue
        marker, dash = styles[label]
        ax.errorbar(
            xs,
            ys,
            xerr=xerr,
            yerr=yerr,
            label=label,
            marker=marker,
            linestyle=dash,
            color=colours[str(groups[0]["strategy"])],
            capsize=3,
            markersize=5,
        )
    for label, value in _base_accuracies(summary).items():
        ax.axhline(100 * value, color="black", linestyle="--", linewidth=1, label=label)
    ax.set_title("Accuracy vs realised MACs reduction (mean ± std over seeds)")
    ax.set_xlabel("MACs removed (%)")
    ax.set_ylabel("Accuracy on selected classes (%)")
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    ax.xaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax.grid(True, alpha=0.3)
    if len(series) > 5:
        fig.set_size_inches(10, 5.5)
        fig.legend(fontsize="small", loc="outside right upper")
    else:
        ax.legend(fontsize="small", loc="best")
    return [_save(fig, path)]


def _base_accuracies(summary: Sequence[Group]) -> dict[str, float]:
    baseline = [g for g in summary if g["strategy"] is None and g["count"]]
    many = len({g["classes"] for g in summary}) > 1
    out: dict[str, float] = {}
    for g in baseline:
        value, _ = _mean(g, "after.accuracy")
        if value is not None:
            suffix = f" ({_field_label('classes', g['classes'])})" if many else ""
            out[f"base model{suffix}"] = value
    if out:
        return out
    # No unpruned run: every pruned run measured its base model before pruning.
    per_classes: dict[Any, list[float]] = {}
    for g in _pruned(summary):
        value, _ = _mean(g, "before.accuracy")
        if value is not None:
            per_classes.setdefault(g["classes"], []).append(value)
    for classes, values in per_classes.items():
        suffix = f" ({_field_label('classes', classes)})" if many else ""
        out[f"base model{suffix}"] = sum(values) / len(values)
    return out


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


def plot_speedup(summary: Sequence[Group], path: str | Path) -> list[Path]:
    """Measured vs theoretical (MACs) speed-up, one subplot per backend, with the identity line.

    Colour is the criterion, marker the batch size; error bars are the standard deviation of
    the measured speed-up over seeds.

    Args:
        summary: Groups from :func:`capl.sweep.report.summarise`.
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
    fig = Figure(figsize=(5.5 * len(keys) + 1.5, 5), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, (backend, backend_batches) in zip(axes, keys.items()):
        top, bottom = 1.0, 1.0
        # a measured speed-up far above any theoretical one is a timing outlier (a noisy
        # machine); the axes follow the theoretical range and such points sit at the top edge
        ceiling = 2.0 * max(
            [2.0]
            + [v for g in groups if (v := _mean(g, "realised.theoretical_speedup")[0]) is not None]
        )
        clipped = 0
        for strategy, colour in colours.items():
            for batch in backend_batches:
                xs, ys, yerr = [], [], []
                for g in groups:
                    if str(g["strategy"]) != strategy:
                        continue
                    x, _ = _mean(g, "realised.theoretical_speedup")
                    y, sy = _mean(g, f"realised.measured_speedup.{backend}.{batch}")
                    if x is None or y is None:
                        continue
                    clipped += y > ceiling
                    xs.append(x)
                    ys.append(min(y, ceiling))
                    yerr.append(0.0 if y > ceiling else sy)
                if xs:
                    top = max(top, *xs, *(y + e for y, e in zip(ys, yerr)))
                    bottom = min(bottom, *(y - e for y, e in zip(ys, yerr)))
                    ax.errorbar(
                        xs,
                        ys,
                        yerr=yerr,
                        color=colour,
                        marker=marker[batch],
                        linestyle="none",
                        capsize=3,
                        markersize=6,
                        alpha=0.85,
                    )
        limit = top * 1.08
        ax.plot([0, limit], [0, limit], color="grey", linestyle="--", linewidth=1)
        ax.axhline(1.0, color="black", linewidth=0.6, alpha=0.5)
        ax.set_xlim(0.9, limit)
        ax.set_ylim(min(0.9, bottom * 0.95), limit)
        title = f"{backend}: measured vs theoretical speed-up"
        if clipped:
            title += f"\n({clipped} outlier(s) above {ceiling:.0f}x drawn at the top edge)"
        ax.set_title(title)
        ax.set_xlabel("Theoretical speed-up (base MACs / pruned MACs, x)")
        ax.set_ylabel("Measured speed-up (base / pruned median latency, x)")
        ax.grid(True, alpha=0.3)
    handles = [
        Line2D([], [], color=c, marker="o", linestyle="none", label=n) for n, c in colours.items()
    ]
    handles += [
        Line2D([], [], color="grey", marker=m, linestyle="none", label=f"batch {b[2:]}")
        if b.startswith("bs")
        else Line2D([], [], color="grey", marker=m, linestyle="none", label=b)
        for b, m in marker.items()
    ]
    handles.append(Line2D([], [], color="grey", linestyle="--", label="measured = theoretical"))
    fig.legend(handles=handles, fontsize="small", loc="outside right upper")
    return [_save(fig, path)]


def plot_per_layer(summary: Sequence[Group], path: str | Path) -> list[Path]:
    """Fraction of channels kept per layer, one subplot per criterion, one line per ratio.

    Args:
        summary: Groups from :func:`capl.sweep.report.summarise` (their ``per_layer`` field).
        path: Destination PNG.

    Returns:
        ``[path]``, or ``[]`` without per-layer data.
    """
    series = {
        label: groups
        for label, groups in _series(summary).items()
        if any(g["per_layer"] for g in groups)
    }
    if not series:
        return []
    layers: dict[str, None] = {}
    kinds: set[str] = set()
    for groups in series.values():
        for g in groups:
            for layer, stat in g["per_layer"].items():
                layers.setdefault(layer)
                if stat.get("kind"):
                    kinds.add(str(stat["kind"]))
    names = list(layers)
    ncols = 1 if len(series) <= 3 else 2
    nrows = math.ceil(len(series) / ncols)
    panel = min(max(7.0, 0.22 * len(names) + 2.0), 14.0)
    fig = Figure(figsize=(panel * ncols, 2.8 * nrows + 1.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    ratios = sorted({g["ratio"] for gs in series.values() for g in gs if g["ratio"] is not None})
    shade = {r: cmap(0.85 * i / max(1, len(ratios) - 1)) for i, r in enumerate(ratios)}
    positions = list(range(len(names)))
    flat = list(axes.flat)
    for ax, (label, groups) in zip(flat, series.items()):
        for g in groups:
            ys = [g["per_layer"].get(n, {}).get("mean") for n in names]
            ax.plot(
                positions,
                [math.nan if y is None else 100 * y for y in ys],
                marker="o",
                markersize=3,
                color=shade.get(g["ratio"], "black"),
                label="unknown" if g["ratio"] is None else f"{g['ratio']:g}",
            )
        ax.set_title(label, fontsize="medium")
        ax.set_ylim(0, 105)
        ax.yaxis.set_major_formatter(PercentFormatter(100))
        ax.grid(True, alpha=0.3)
    for ax in flat[len(series) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("Kept (%)")
    fontsize = "xx-small" if len(names) > 40 else "x-small" if len(names) > 20 else "small"
    for col in range(ncols):
        # The lowest visible panel of each column carries the layer names.
        last = max(r for r in range(nrows) if r * ncols + col < len(series))
        bottom_ax = axes[last, col]
        bottom_ax.set_xticks(positions)
        bottom_ax.set_xticklabels(names, rotation=90, fontsize=fontsize)
        bottom_ax.tick_params(labelbottom=True)
        bottom_ax.set_xlabel("Layer (network order)")
    unit = "channels" if kinds <= {"channels"} else "channels / weights"
    fig.suptitle(f"Share of {unit} kept per layer (after / before, mean over seeds)")
    handles, labels = flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="ratio", loc="outside right center", fontsize="small")
    return [_save(fig, path)]


def _timing_names(summary: Sequence[Group]) -> list[str]:
    names = {
        name.split(".", 1)[1]
        for g in summary
        for name in g["metrics"]
        if name.startswith("timings_s.")
    }
    return [n for n in _TIMING_ORDER if n in names] + sorted(names.difference(_TIMING_ORDER))


def plot_overhead(summary: Sequence[Group], path: str | Path) -> list[Path]:
    """Preparation time per criterion, stacked by phase (selection, removal, retraining).

    Each bar is the mean over all successful runs of one criterion (all ratios and seeds; for
    selection only the runs that computed their scores rather than reading them from the
    cache), so criteria compare at a glance; the report's overhead table has the per-ratio
    values.

    Args:
        summary: Groups from :func:`capl.sweep.report.summarise`.
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
            stats = [g["metrics"].get(f"timings_s.{phase}") or {} for g in groups]
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
        summary: Groups from :func:`capl.sweep.report.summarise`.
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
