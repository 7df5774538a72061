"""Network slimming: BatchNorm scale factors (Liu et al., 2017)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capl.criteria._activations import conv_layers, following_batchnorms
from capl.criteria.base import Criterion


class BNScale(Criterion):
    """Score each Conv2d output channel by ``|gamma|`` of the BatchNorm that follows the conv.

    Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017.
    The conv -> BN pairing is the static one of
    :func:`~capl.criteria._activations.following_batchnorms` (the BN registered right after the
    conv with matching width, which is the forward order in torchvision networks).

    A conv with no following affine BatchNorm (VGG without BN, SE-block convs) falls back to the
    L1 norm of its filters (Li et al., 2017) so that every conv has a finite score. In a network
    that also has scored BatchNorms, each such layer's L1 norms are rescaled so that their mean
    is the mean ``|gamma|`` of the network: an SE conv coupled with BN-scored convs (the SE
    excitation multiplies the expansion channels) then neither keeps its group whole nor empties
    it in a global ranking, and the within-layer order is the L1 norm's. A network without any
    BatchNorm keeps the plain L1 norms. See :attr:`fallback_layers` after scoring for which
    layers used the fallback.
    """

    granularity = "filter"

    def __init__(self) -> None:
        self._fallback: list[str] = []

    @property
    def fallback_layers(self) -> list[str]:
        """Layers of the last :meth:`score` call scored by filter L1 norm instead of ``|gamma|``."""
        return list(self._fallback)

    def score(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Return ``|gamma|`` (or the filter L1 norm, see above) per output channel."""
        bns = following_batchnorms(model)
        scores: dict[str, Tensor] = {}
        self._fallback = []
        for name, conv in conv_layers(layers).items():
            bn = bns.get(name)
            if bn is not None and bn.weight is not None:
                scores[name] = bn.weight.detach().abs().clone()
            else:
                self._fallback.append(name)
                scores[name] = conv.weight.detach().flatten(1).norm(p=1, dim=1)
        gammas = [bn.weight.detach().abs() for bn in bns.values() if bn.weight is not None]
        if gammas and self._fallback:
            scale = torch.cat(gammas).mean()
            for name in self._fallback:
                mean = scores[name].mean()
                if mean > 0:  # an all-zero layer stays all zero
                    scores[name] = scores[name] * (scale / mean)
        return scores
