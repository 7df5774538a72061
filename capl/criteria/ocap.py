"""OCAP: observed-class-aware pruning by per-image channel activation norms (Ma et al., 2023)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capl.criteria._activations import ActivationSites, conv_layers, iter_batches, new_stat
from capl.criteria.base import Batch, Criterion, run_in_eval
from capl.models import model_device


class OCAP(Criterion):
    """Keep a channel iff it is among the top channels of at least one image of the chosen classes.

    Ma et al., "OCAP: On-device Class-Aware Pruning for Personalized Edge DNN Models", Journal of
    Systems Architecture, 2023. Per image, each channel's strength is the L2 norm over H x W of
    ``LeakyReLU(a)`` (``a`` = the post-BN activation site); each image keeps its top channels and
    the kept set is the union over all calibration images (all batches, not just the first).

    Additive statistics: per layer a rank histogram ``counts[c, r]`` = number of images in which
    channel ``c`` had rank ``r`` (0 = strongest; ties broken by channel index). Summing histograms
    of shards gives the histogram of the union. The score is::

        score[c] = (C - best_rank[c] + hits[c] / (N + 1)) / C

    with ``best_rank[c]`` the best rank channel ``c`` reached in any image, ``hits[c]`` the number
    of images in which it reached that rank and ``N`` the number of images. Lower best rank means a
    strictly higher score; ``hits`` only orders channels with equal best rank. Hence, for a
    per-image keep fraction ``f`` (top ``k = ceil(f * C)`` channels per image), the union of the
    per-image top-k sets is exactly ``{c : score[c] >= (C - k + 1) / C}``
    (:meth:`union_threshold`), so "remove the lowest scores" at that threshold is the paper's union
    rule and a pruner can calibrate ``f`` (or any ratio) with the same scores. The class
    awareness comes from the calibration data (images of the chosen classes only); ``target_rows``
    is not used. Memory is ``C x C`` int32 per layer, independent of the number of images.

    Args:
        negative_slope: Slope of the LeakyReLU applied before the norm.

    Stats: ``"<layer>/rank_counts"`` (int32 ``[C, C]``).
    """

    granularity = "filter"
    requires_data = True
    class_aware = True

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = float(negative_slope)

    def collect(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        layers: dict[str, nn.Module],
        target_rows: Sequence[int],
    ) -> dict[str, Tensor]:
        """Accumulate per-layer rank histograms of per-image channel norms."""
        convs = conv_layers(layers)
        device = model_device(model)
        stats = {
            f"{n}/rank_counts": new_stat((c.out_channels, c.out_channels), device, torch.int32)
            for n, c in convs.items()
        }
        # per-image norms are taken inside the forward hooks: no activation is cloned or kept
        with (
            run_in_eval(model),
            ActivationSites(model, convs, reduce=self._strength) as rec,
            torch.inference_mode(),
        ):
            for images, _ in iter_batches(batches, device):
                for name, strength in rec.run(images).items():
                    self._add_ranks(stats[f"{name}/rank_counts"], strength)
        return stats

    def _strength(self, name: str, site: Tensor) -> Tensor:
        """Per-image channel strength ``||LeakyReLU(a)||_2`` over H x W, ``[B, C]``."""
        return F.leaky_relu(site, self.negative_slope).flatten(2).norm(dim=2)

    @staticmethod
    def _add_ranks(counts: Tensor, strength: Tensor) -> None:
        channels = strength.shape[1]
        order = torch.sort(strength, dim=1, descending=True, stable=True).indices
        rank = torch.argsort(order, dim=1)  # rank[b, c]
        chan = torch.arange(channels, device=strength.device).expand_as(rank)
        flat = (chan * channels + rank).flatten()
        counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=counts.dtype))

    def score(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Turn rank histograms into union-rule scores in (0, 1] (zeros if no image was seen)."""
        scores = {}
        for name in conv_layers(layers):
            counts = stats[f"{name}/rank_counts"].to(torch.int64)
            channels = counts.shape[0]
            images = counts[0].sum()
            if images == 0:
                scores[name] = torch.zeros(channels, dtype=torch.float64, device=counts.device)
                continue
            best = (counts > 0).to(torch.int8).argmax(dim=1)  # first rank with a hit
            hits = counts.gather(1, best[:, None]).squeeze(1)
            scores[name] = (channels - best + hits / (images + 1)).to(torch.float64) / channels
        return scores

    @staticmethod
    def union_threshold(num_channels: int, keep_fraction: float) -> float:
        """Score threshold equal to the union rule for a per-image keep fraction.

        Channels with ``score >= union_threshold(C, f)`` are exactly those that rank within the top
        ``ceil(f * C)`` channels of at least one image.
        """
        if not 0 < keep_fraction <= 1:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        keep = math.ceil(keep_fraction * num_channels)
        return (num_channels - keep + 1) / num_channels
