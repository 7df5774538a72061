"""The scan itself, in plain PyTorch: each unit pruned alone at each ratio; the suggestion rule.

A *unit* is what one layer ratio prunes: for filter criteria a dependency group of coupled
convolutions named by its key (first) conv, for weight/kernel criteria a single Conv2d/Linear.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from capl.errors import ConfigError

__all__ = ["CSV_COLUMNS", "scan_layers", "suggest_ratios"]

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "layer",
    "ratio",
    "accuracy",
    "accuracy_drop",
    "macs_removed",
    "params_removed",
    "channels_removed",
    "members",
)

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def _units(
    network: nn.Module, granularity: str, example: torch.Tensor
) -> tuple[dict[str, list[str]], list[str]]:
    """Scan units (name -> member modules) in forward order, and all prunable module names."""
    from capl.pruning import prunable_layers
    from capl.pruning.structure import analyse

    if granularity == "filter":
        structure = analyse(network, example)
        units = {g.key: [name for name, _, _ in g.convs] for g in structure.groups}
        prunable = list(structure.conv_order)
    else:
        prunable = list(prunable_layers(network, granularity))
        units = {name: [name] for name in prunable}
    return units, prunable


def _chosen(units: dict[str, list[str]], layers: Sequence[str] | None) -> dict[str, list[str]]:
    """The units whose name or a member's matches one of the ``fnmatch`` patterns.

    Raises:
        ConfigError: Patterns that match no unit.
    """
    if layers is None:
        return units
    chosen = {
        key: members
        for key, members in units.items()
        if any(fnmatch.fnmatch(n, p) for p in layers for n in (key, *members))
    }
    if not chosen:
        raise ConfigError(
            f"layers {list(layers)} match no prunable layer (e.g. {', '.join(list(units)[:3])})"
        )
    return chosen


class _Scan:
    """One scan's fixed inputs: the base network, its scores and how accuracy is measured."""

    def __init__(
        self,
        network: nn.Module,
        criterion: Any,
        scores: Any,
        eval_batches: Batches,
        rows: Sequence[int],
        example: torch.Tensor,
    ) -> None:
        self.network = network
        self.criterion = criterion
        self.scores = scores
        self.eval_batches = eval_batches
        self.rows = rows
        self.example = example

    def accuracy(self, net: nn.Module) -> float:
        """The k-way accuracy of ``net`` on the evaluation batches."""
        from capl.evaluation import accuracy_from_confusion, confusion_matrix

        matrix = confusion_matrix(net, self.eval_batches, self.rows)
        return float(accuracy_from_confusion(matrix)["accuracy"])

    def measure(self, key: str, ratio: float, ignore: list[str]) -> dict[str, float] | None:
        """Accuracy and removed fractions with unit ``key`` (all but ``ignore``) at ``ratio``.

        Returns:
            The row's measured values; ``None`` when the ratio cannot be planned (e.g. it would
            empty a tiny layer).
        """
        from capl.pruning import PruningConfig, apply_plan, make_plan

        # exact widths: a scan measures the ratio itself (the suggestion replays it so)
        config = PruningConfig(ratio=ratio, scope="layer", ignore=ignore, round_to=None)
        try:
            plan = make_plan(self.network, self.criterion, self.scores, config, self.example)
        except ConfigError as err:
            log.warning("layer %s ratio %s: %s", key, ratio, err)
            return None
        pruned = copy.deepcopy(self.network)
        apply_plan(pruned, plan, self.example)
        report = plan.report
        return {
            "accuracy": self.accuracy(pruned),
            "macs_removed": float(report.get("macs_removed_fraction", 0.0)),
            "params_removed": float(report.get("params_removed_fraction", 0.0)),
            "channels_removed": float(report.get("channels_removed_fraction", 0.0)),
        }


def scan_layers(
    network: nn.Module,
    criterion: Any,
    batches: Batches,
    eval_batches: Batches,
    rows: Sequence[int],
    ratios: Sequence[float],
    input_shape: Sequence[int],
    layers: Sequence[str] | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Prune each layer alone at each ratio and measure the k-way accuracy (plain PyTorch).

    Args:
        network: The base network (left unchanged).
        criterion: A capl criterion; scores are computed once on the base network.
        batches: Calibration batches for data-driven criteria.
        eval_batches: Batches the accuracy is measured on.
        rows: Logit rows of the selected classes (``capl.evaluation.target_rows``).
        ratios: Ratios to scan (per layer, ``scope: layer``).
        input_shape: ``(C, H, W)`` of one image.
        layers: ``fnmatch`` patterns of the units to scan (unit names or member names);
            ``None`` scans all.

    Returns:
        The base accuracy and one row per (layer, ratio) with the CSV columns.

    Raises:
        ConfigError: Patterns that match no prunable layer.
    """
    from capl.pruning import select_scores

    network = copy.deepcopy(network).cpu().eval()
    example = torch.zeros(1, *input_shape)
    units, prunable = _units(network, criterion.granularity, example)
    units = _chosen(units, layers)
    scores = select_scores(criterion, network, batches, rows)
    scan = _Scan(network, criterion, scores, eval_batches, rows, example)
    base_accuracy = scan.accuracy(network)
    unpruned = {
        "accuracy": base_accuracy,
        "macs_removed": 0.0,
        "params_removed": 0.0,
        "channels_removed": 0.0,
    }
    out: list[dict[str, Any]] = []
    for key, members in units.items():
        ignore = [name for name in prunable if name not in members]
        for ratio in ratios:
            row = {"layer": key, "ratio": float(ratio), "members": ";".join(members)}
            measured = unpruned if ratio == 0.0 else scan.measure(key, ratio, ignore)
            if measured is None:
                continue
            row.update(measured, accuracy_drop=base_accuracy - measured["accuracy"])
            out.append({c: row[c] for c in CSV_COLUMNS})
        log.info(
            "sensitivity %s: %s",
            key,
            ", ".join(f"{r['ratio']:.2f}->{r['accuracy']:.3f}" for r in out if r["layer"] == key),
        )
    return base_accuracy, out


def suggest_ratios(
    rows: Sequence[Mapping[str, Any]],
    base_accuracy: float,
    max_drop: float,
    contiguous: bool = True,
) -> dict[str, float]:
    """Per layer, the largest scanned ratio whose accuracy drop is at most ``max_drop``.

    Args:
        rows: Rows with ``layer``, ``ratio`` and ``accuracy``.
        base_accuracy: Accuracy of the unpruned network.
        max_drop: Allowed absolute drop (0.01 = one percentage point).
        contiguous: Also require every smaller scanned ratio of that layer to stay within the
            drop, so a lucky high ratio after a failing lower one is not suggested.

    Returns:
        ``{layer: ratio}`` in first-seen layer order; 0.0 when no ratio qualifies.
    """
    by_layer: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        by_layer.setdefault(str(row["layer"]), []).append(
            (float(row["ratio"]), float(row["accuracy"]))
        )
    eps = 1e-12  # equal accuracies computed two ways must not count as a drop
    suggestion: dict[str, float] = {}
    for layer, points in by_layer.items():
        best = 0.0
        for ratio, acc in sorted(points):
            if base_accuracy - acc <= max_drop + eps:
                best = max(best, ratio)
            elif contiguous:
                break
        suggestion[layer] = best
    return suggestion
