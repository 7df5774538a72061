"""Unstructured weight magnitude (Han et al., 2015)."""

from __future__ import annotations

from torch import Tensor, nn

from capl.criteria._activations import weight_layers
from capl.criteria.base import Criterion


class Magnitude(Criterion):
    """Score every Conv2d and Linear weight by its absolute value.

    Han et al., "Learning both Weights and Connections for Efficient Neural Networks", NeurIPS
    2015. The pruner ranks all scores globally and masks the smallest; excluding the final
    classifier is the pruner's decision, not this criterion's.
    """

    granularity = "weight"

    def score(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Return ``|w|`` shaped like each Conv2d/Linear weight."""
        return {name: m.weight.detach().abs().clone() for name, m in weight_layers(layers).items()}
