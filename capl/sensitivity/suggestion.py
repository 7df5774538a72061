"""``suggestion.json``: each scanned layer's largest safe ratio; the PruningCallback replaying it.

``layer_ratios`` keys are the scan units' names, exactly what ``PruningConfig.layer_ratios``
matches, so ``PruningConfig(ratio=0.0, layer_ratios=...)`` replays each layer's scanned removal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from capl.sensitivity.config import SensitivityConfig

__all__ = [
    "SUGGESTED_PRUNING_FILE",
    "make_suggestion",
    "suggested_pruning",
    "suggested_pruning_yaml",
]

SUGGESTED_PRUNING_FILE = "suggested_pruning.yaml"

_USAGE = (
    "layer_ratios maps module names (fnmatch patterns; for filter criteria the first "
    "conv of a coupled group) to the largest ratio that kept the accuracy drop within "
    "max_accuracy_drop when that layer alone was pruned; give it to a pruning run as "
    "PruningCallback(layer_ratios=...) with scope: layer (ready-made: "
    f"{SUGGESTED_PRUNING_FILE} next to this file). Drops of several layers add up: "
    "lower max_accuracy_drop or retrain."
)


def make_suggestion(
    config: SensitivityConfig,
    table: Sequence[Mapping[str, Any]],
    base_accuracy: float,
    layer_ratios: Mapping[str, float],
    context: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``suggestion.json`` content.

    Args:
        config: The scan's settings.
        table: The scan's rows (``sensitivity.csv``).
        base_accuracy: Accuracy of the unpruned network.
        layer_ratios: Each layer's suggested ratio (:func:`capl.sensitivity.scan.suggest_ratios`).
        context: ``base_weights``, ``dataset`` and ``classes`` of the run.
    """
    details = {}
    for layer, ratio in layer_ratios.items():
        row = next(r for r in table if r["layer"] == layer and r["ratio"] == ratio)
        details[layer] = {
            "ratio": ratio,
            "accuracy": row["accuracy"],
            "accuracy_drop": row["accuracy_drop"],
            "members": row["members"].split(";"),
        }
    return {
        "network": config.base.network,
        "base_weights": context["base_weights"],
        "dataset": context["dataset"],
        "classes": list(context["classes"]),
        "criterion": {
            "class_path": config.criterion.class_path,
            "init_args": config.criterion.init_args,
        },
        "split": config.split,
        "base_accuracy": base_accuracy,
        "max_accuracy_drop": config.max_accuracy_drop,
        "contiguous": config.contiguous,
        "ratios_scanned": config.ratios,
        "layer_ratios": dict(layer_ratios),
        "details": details,
        "usage": _USAGE,
    }


def suggested_pruning(suggestion: Mapping[str, Any]) -> dict[str, Any]:
    """The ``PruningCallback`` entry that prunes every layer at its suggested ratio.

    Args:
        suggestion: ``suggestion.json`` content (``layer_ratios`` and ``criterion``).

    Returns:
        ``{"class_path": "capl.callbacks.PruningCallback", "init_args": {...}}`` with the
        criterion, ``ratio: 0.0`` (groups that were not scanned stay whole), ``scope: layer``,
        ``round_to: null`` (the scan's exact widths) and ``layer_ratios``.

    Raises:
        ConfigError: The suggestion's ratios are not a valid ``PruningConfig.layer_ratios``.
    """
    from capl.pruning import PruningConfig

    layer_ratios = {str(k): float(v) for k, v in dict(suggestion["layer_ratios"]).items()}
    PruningConfig(ratio=0.0, scope="layer", layer_ratios=layer_ratios)  # validate eagerly
    criterion = dict(suggestion["criterion"])
    return {
        "class_path": "capl.callbacks.PruningCallback",
        "init_args": {
            "criterion": {
                "class_path": criterion["class_path"],
                "init_args": dict(criterion.get("init_args") or {}),
            },
            "ratio": 0.0,
            "scope": "layer",
            "round_to": None,
            "layer_ratios": layer_ratios,
        },
    }


def suggested_pruning_yaml(suggestion: Mapping[str, Any]) -> str:
    """``suggested_pruning.yaml`` text: a commented one-item ``trainer.callbacks`` list."""
    header = (
        f"# capl-sensitivity suggestion for {suggestion.get('network')} on "
        f"{suggestion.get('dataset')} classes {suggestion.get('classes')}: each layer at the\n"
        f"# largest ratio that kept the accuracy drop within "
        f"{suggestion.get('max_accuracy_drop')} when pruned alone (drops add up).\n"
        "# Paste this item under trainer.callbacks of a run config in place of its\n"
        "# PruningCallback (e.g. configs/runs/prune_test.yaml) and point model.weights at\n"
        f"# {suggestion.get('base_weights')}. Layers not listed keep ratio (0.0: unpruned).\n"
    )
    body = yaml.safe_dump(
        [suggested_pruning(suggestion)], sort_keys=False, default_flow_style=False
    )
    return header + body
