"""Kernel-level and intra-kernel magnitude criteria (Mao et al., 2017)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capl.criteria._activations import conv_layers
from capl.criteria.base import Criterion


class KernelMagnitude(Criterion):
    """Score each whole k x k kernel of a Conv2d by its p-norm.

    Mao et al., "Exploring the Granularity of Sparsity in Convolutional Neural Networks", CVPR
    Workshops 2017 (kernel-level, "2-D" sparsity). A kernel is the slice ``weight[o, i]``.

    Args:
        p: Norm order over the kernel's k*k weights.
    """

    granularity = "kernel"

    def __init__(self, p: float = 1.0) -> None:
        if p <= 0:
            raise ValueError(f"KernelMagnitude p must be > 0, got {p}")
        self.p = float(p)

    def score(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Return a ``[out_channels, in_channels / groups]`` norm per Conv2d."""
        return {
            name: m.weight.detach().flatten(2).norm(p=self.p, dim=2)
            for name, m in conv_layers(layers).items()
        }


class IntraKernel(Criterion):
    """Intra-kernel (pattern-like) pruning: the smallest weights *inside each kernel* go first.

    Mao et al., "Exploring the Granularity of Sparsity in Convolutional Neural Networks", CVPR
    Workshops 2017 (fine-grained sparsity inside kernels); the pattern view follows Niu et al.,
    "PatDNN", ASPLOS 2020.

    Unlike :class:`~capl.criteria.magnitude.Magnitude`, which compares raw ``|w|`` across the
    whole network (so kernels or layers with small weights are emptied first), the score here is
    ``|w| / max|w|`` within the weight's own kernel. Ranking these globally removes the same
    *relative* share of each kernel: every kernel keeps its largest weight at any threshold below 1,
    so sparsity lands inside kernels as patterns instead of wiping whole kernels or layers.
    1x1 kernels have a single weight whose score is 1 (never pruned before a full sweep); Linear
    layers have no kernels and are not scored. An all-zero kernel scores 0.
    """

    granularity = "weight"

    def score(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Return per-kernel-normalised ``|w|`` shaped like each Conv2d weight."""
        scores = {}
        for name, m in conv_layers(layers).items():
            w = m.weight.detach().abs()
            peak = w.amax(dim=(2, 3), keepdim=True)
            scores[name] = torch.where(peak > 0, w / peak.clamp_min(torch.finfo(w.dtype).tiny), 0.0)
        return scores
