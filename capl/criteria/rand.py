"""Seeded random filter scores: the baseline every criterion must beat."""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

from capl.criteria._activations import conv_layers
from capl.criteria.base import Criterion


class Random(Criterion):
    """Uniform random score per Conv2d output channel.

    The control used throughout the pruning literature, e.g. Blalock et al., "What is the State of
    Neural Network Pruning?", MLSys 2020. Each layer draws from its own local generator seeded with
    ``(seed, layer name)``, so scores depend neither on the global RNG state nor on which other
    layers are scored.

    Args:
        seed: Seed; the same seed gives the same scores.
    """

    granularity = "filter"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def score(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Return uniform [0, 1) scores per output channel (on the CPU)."""
        scores = {}
        for name, m in conv_layers(layers).items():
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
            scores[name] = torch.rand(m.out_channels, generator=gen, dtype=torch.float64)
        return scores
