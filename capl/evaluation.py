"""Plain k-way evaluation of a network on a class subset (no Lightning)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from capl.errors import ConfigError


def target_rows(head_classes: Sequence[int], class_indices: Sequence[int]) -> list[int]:
    """Logit row of each selected class: ``head_classes.index(c)`` for each ``c``.

    Args:
        head_classes: Original class index of each classifier row.
        class_indices: Original indices of the selected classes, in subset-label order.

    Raises:
        ConfigError: A selected class has no row in the head.
    """
    missing = [c for c in class_indices if c not in head_classes]
    if missing:
        raise ConfigError(
            f"classes {missing} are not in the model's head (it predicts original classes "
            f"{_short(head_classes)}): select classes the head has, or use a model with a full head"
        )
    return [list(head_classes).index(c) for c in class_indices]


def _short(values: Sequence[int]) -> str:
    values = list(values)
    return str(values) if len(values) <= 12 else f"[{values[0]}..{values[-1]}] ({len(values)} rows)"


@torch.inference_mode()
def confusion_matrix(
    network: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], rows: Sequence[int]
) -> Tensor:
    """K x k confusion counts (true subset label x predicted subset label) on the k-way task.

    The network runs in eval mode (its previous mode is restored); logits are restricted to
    ``rows`` so a full-head model and a class-subset head are scored on the same task.
    """
    device = next(network.parameters()).device
    k = len(rows)
    counts = torch.zeros(k, k, dtype=torch.long)
    index = torch.tensor(list(rows), device=device)
    was_training = network.training
    network.eval()
    try:
        for images, labels in batches:
            pred = network(images.to(device)).index_select(1, index).argmax(1).cpu()
            counts += torch.bincount(labels.cpu() * k + pred, minlength=k * k).view(k, k)
    finally:
        network.train(was_training)
    return counts


def accuracy_from_confusion(counts: Tensor) -> dict[str, float | list[float]]:
    """Top-1 accuracy, per-class accuracy (recall) and macro accuracy from confusion counts."""
    per_class = (counts.diag().double() / counts.sum(1).clamp(min=1).double()).tolist()
    total = int(counts.sum())
    return {
        "accuracy": float(counts.diag().sum()) / max(total, 1),
        "accuracy_macro": sum(per_class) / len(per_class),
        "accuracy_per_class": per_class,
        "samples": total,
    }


def evaluate_subset(
    network: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    rows: Sequence[int],
    class_names: Sequence[str],
) -> dict[str, float | int | dict[str, float]]:
    """Accuracy of ``network`` on the k-way task: overall, macro, per class (by name), samples.

    Args:
        network: The network (any mode; evaluated in eval mode, mode restored).
        batches: ``(images, subset labels)`` batches.
        rows: Logit row of each subset label (:func:`target_rows`).
        class_names: Name of each subset label, for the per-class mapping.
    """
    acc = accuracy_from_confusion(confusion_matrix(network, batches, rows))
    return {
        "accuracy": acc["accuracy"],
        "accuracy_macro": acc["accuracy_macro"],
        "accuracy_per_class": dict(zip(class_names, acc["accuracy_per_class"])),
        "test_samples": acc["samples"],
    }
