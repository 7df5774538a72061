"""Per-filter weight norm (Li et al., 2017)."""

from __future__ import annotations

from torch import Tensor, nn

from capl.criteria._activations import conv_layers
from capl.criteria.base import Criterion


class L1Norm(Criterion):
    """Score each Conv2d output channel by the p-norm of its filter.

    Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017 (``p=1``: sum of absolute
    weights of the filter, smallest removed per layer).

    Args:
        p: Norm order; 1 is the paper's L1 norm, 2 gives the L2 norm.
    """

    granularity = "filter"

    def __init__(self, p: float = 1.0) -> None:
        if p <= 0:
            raise ValueError(f"L1Norm p must be > 0, got {p}")
        self.p = float(p)

    def score(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Return one norm per output channel of each Conv2d."""
        return {
            name: m.weight.detach().flatten(1).norm(p=self.p, dim=1)
            for name, m in conv_layers(layers).items()
        }
