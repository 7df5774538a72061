"""First-order Taylor expansion of the loss (Molchanov et al., 2017)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capl.criteria._activations import (
    ActivationSites,
    conv_layers,
    iter_batches,
    new_stat,
    rows_tensor,
)
from capl.criteria.base import Batch, Criterion, run_in_eval
from capl.models import model_device


class Taylor(Criterion):
    """Score a channel by ``|sum_hw a * dL/da|`` per image, averaged over images.

    Molchanov et al., "Pruning Convolutional Neural Networks for Resource Efficient Inference",
    ICLR 2017. ``a`` is the channel's activation site (the output of the BatchNorm following the
    conv, or the conv output). The loss is the cross-entropy of the *k-way task in the head's
    index space*: logits restricted to ``target_rows`` with the subset labels. It is summed over
    the batch (not averaged) so that each image's gradient is its own and does not depend on the
    batch size, which keeps the statistics additive. Scores are normalised per layer by their L2
    norm before global ranking, as in the paper.

    Gradients are taken with ``torch.autograd.grad`` w.r.t. the activation sites only, so no
    parameter's ``.grad`` is created or changed.

    Stats: ``"<layer>/taylor"`` (float64 ``[C]``, sum over images of the per-image score) and
    ``"images"`` (int64 scalar).
    """

    granularity = "filter"
    requires_data = True
    class_aware = True
    normalization = "l2"

    def collect(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        layers: dict[str, nn.Module],
        target_rows: Sequence[int],
    ) -> dict[str, Tensor]:
        """Sum per-image Taylor scores over ``batches``."""
        convs = conv_layers(layers)
        device = model_device(model)
        rows = rows_tensor(target_rows, device)
        stats = {
            f"{n}/taylor": new_stat(c.out_channels, device, torch.float64) for n, c in convs.items()
        }
        images_seen = new_stat((), device, torch.int64)
        with run_in_eval(model), ActivationSites(model, convs) as rec, torch.enable_grad():
            for images, labels in iter_batches(batches, device):
                rec.reset()
                # a graph must exist even when the parameters are frozen
                logits = model(images.requires_grad_(True))
                loss = F.cross_entropy(logits.index_select(1, rows), labels, reduction="sum")
                for name, grad in rec.gradients(loss):
                    site = rec.sites[name].detach()
                    per_image = (site * grad).sum(dim=(2, 3)).abs()
                    stats[f"{name}/taylor"] += per_image.sum(dim=0, dtype=torch.float64)
                images_seen += images.shape[0]
                rec.reset()
        stats["images"] = images_seen
        return stats

    def score(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Average the summed Taylor scores over images (zeros when no image was seen)."""
        count = stats["images"].clamp_min(1).to(torch.float64)
        return {n: stats[f"{n}/taylor"] / count for n in conv_layers(layers)}
