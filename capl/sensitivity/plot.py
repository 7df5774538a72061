"""``sensitivity.png``: accuracy vs ratio, one line per scanned layer, coloured by depth."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from capl.io import write_bytes_atomic

__all__ = ["plot_sensitivity"]


def plot_sensitivity(
    rows: Sequence[Mapping[str, Any]], base_accuracy: float, path: str | Path, top: int = 6
) -> Path:
    """Accuracy vs ratio, one line per layer, coloured by depth.

    Up to 16 layers get a legend outside the axes; with more, a colour bar shows depth and only
    the ``top`` most sensitive layers (largest drop at their highest ratio) are labelled.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(str(r["layer"]) for r in rows))
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(9, 5))
    worst: list[tuple[float, str]] = []
    for i, layer in enumerate(layers):
        points = sorted(
            (float(r["ratio"]), float(r["accuracy"])) for r in rows if r["layer"] == layer
        )
        xs, ys = zip(*points)
        colour = cmap(i / max(len(layers) - 1, 1))
        ax.plot(xs, ys, marker="o", markersize=3, color=colour, linewidth=1.2, label=layer)
        worst.append((base_accuracy - ys[-1], layer))
        if len(layers) > 16 and layer in {n for _, n in sorted(worst, reverse=True)[:top]}:
            ax.annotate(
                layer,
                (xs[-1], ys[-1]),
                fontsize=7,
                xytext=(3, 0),
                textcoords="offset points",
                color=colour,
            )
    ax.axhline(base_accuracy, color="grey", linestyle="--", linewidth=0.8, label="base")
    ax.set_xlabel("ratio of the layer's filters removed")
    ax.set_ylabel("accuracy (k-way)")
    ax.set_title("Per-layer pruning sensitivity")
    ax.grid(alpha=0.3)
    if len(layers) <= 16:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    else:
        bar = fig.colorbar(
            plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(layers) - 1)), ax=ax
        )
        bar.set_label("layer depth (forward order)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())
