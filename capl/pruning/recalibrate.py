"""Adaptive BatchNorm: re-estimate running statistics of a pruned network (EagleEye's step)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = ["batchnorm_layers", "recalibrate_batchnorm"]


def batchnorm_layers(network: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``network`` that track running statistics."""
    return [
        m
        for m in network.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recalibrate_batchnorm(
    network: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_batches: int
) -> int:
    """Reset BatchNorm running statistics and re-estimate them on ``num_batches`` batches.

    Removing channels shifts the statistics every later BatchNorm sees, so the stored running
    means and variances no longer fit (Li et al., EagleEye, ECCV 2020). Only the BatchNorm
    layers run in train mode (cumulative averages, ``momentum=None``); dropout and every other
    layer stay in eval mode; no gradient is taken and no weight changes. The network's modes
    and the layers' momenta are restored afterwards.

    Args:
        network: The (pruned) network; its device is used for the batches.
        batches: ``(images, labels)`` batches of the selected classes' training images.
        num_batches: How many batches to use (fewer when ``batches`` runs out first).

    Returns:
        The number of batches used (0 when the network has no BatchNorm or ``num_batches`` is 0).
    """
    norms = batchnorm_layers(network)
    if not norms or num_batches <= 0:
        return 0
    device = next(network.parameters()).device
    modes = {m: m.training for m in network.modules()}
    momenta = [m.momentum for m in norms]
    used = 0
    try:
        network.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        for images, _ in batches:
            if used >= num_batches:
                break
            network(images.to(device))
            used += 1
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
    if used < num_batches:
        log.warning("BatchNorm recalibration asked for %d batches, got %d", num_batches, used)
    return used
