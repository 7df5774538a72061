"""Learning-rate schedule rules the ``capl`` command applies before building the model.

A ``CosineAnnealingLR`` in capl's configs means one cosine over the whole run, so its ``T_max``
follows ``trainer.max_epochs``: ``--trainer.max_epochs 20`` on a config written for 6 epochs
would otherwise anneal to the minimum after 6 epochs and climb back up for the next 6 (the
schedule is periodic). jsonargparse's argument links cannot reach into the init arguments of a
callable such as ``model.lr_scheduler``, hence this rule. A different period is what
``CosineAnnealingWarmRestarts`` (``T_0``) is for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["link_cosine_to_run"]

log = logging.getLogger(__name__)

_COSINE = ("torch.optim.lr_scheduler.CosineAnnealingLR", "CosineAnnealingLR")


def _get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)


def link_cosine_to_run(config: Any) -> int | None:
    """Set a ``CosineAnnealingLR``'s ``T_max`` to ``trainer.max_epochs`` (in place).

    Args:
        config: The parsed config of a subcommand (jsonargparse Namespace or dict) with
            ``model.lr_scheduler`` and ``trainer.max_epochs``.

    Returns:
        The ``T_max`` now in the config, or ``None`` when the rule does not apply (another or no
        scheduler, or no positive ``max_epochs``).
    """
    model, trainer = _get(config, "model"), _get(config, "trainer")
    scheduler = _get(model, "lr_scheduler") if model is not None else None
    epochs = _get(trainer, "max_epochs") if trainer is not None else None
    if scheduler is None or _get(scheduler, "class_path") not in _COSINE:
        return None
    if not isinstance(epochs, int) or epochs <= 0:
        return None
    init = _get(scheduler, "init_args")
    if init is None:
        return None
    before = _get(init, "T_max")
    if before != epochs:
        if isinstance(init, dict):
            init["T_max"] = epochs
        else:
            init.T_max = epochs
        log.info(
            "CosineAnnealingLR T_max %s -> %d: one cosine over trainer.max_epochs", before, epochs
        )
    return epochs
