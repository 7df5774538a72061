"""Average percentage of zeros (Hu et al., 2016)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from capl.criteria._activations import ActivationSites, conv_layers, iter_batches, new_stat
from capl.criteria.base import Batch, Criterion, run_in_eval
from capl.models import model_device


class APoZ(Criterion):
    """Score a channel by ``1 - APoZ``: the fraction of its post-ReLU outputs that are non-zero.

    Hu et al., "Network Trimming: A Data-Driven Neuron Pruning Approach towards Efficient Deep
    Architectures", arXiv:1607.03250, 2016. The ReLU is applied to the channel's activation site
    (BatchNorm output, or conv output): ``ReLU(a) == 0`` iff ``a <= 0``. Networks whose
    activation is not a ReLU (Hardswish, SiLU) are measured against this ReLU view too, which is
    the usual way APoZ is transferred to them. Higher score = more often active = more important.

    Stats: ``"<layer>/zeros"`` and ``"<layer>/elements"`` (int64 ``[C]``; exact counts).
    """

    granularity = "filter"
    requires_data = True

    def collect(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        layers: dict[str, nn.Module],
        target_rows: Sequence[int],
    ) -> dict[str, Tensor]:
        """Count zero and total post-ReLU elements per channel over ``batches``."""
        convs = conv_layers(layers)
        device = model_device(model)
        stats: dict[str, Tensor] = {}
        for name, conv in convs.items():
            stats[f"{name}/zeros"] = new_stat(conv.out_channels, device, torch.int64)
            stats[f"{name}/elements"] = new_stat(conv.out_channels, device, torch.int64)
        # counted inside the forward hooks: no activation is cloned or kept
        with (
            run_in_eval(model),
            ActivationSites(model, convs, reduce=_zeros) as rec,
            torch.inference_mode(),
        ):
            for images, _ in iter_batches(batches, device):
                for name, (zeros, elements) in rec.run(images).items():
                    stats[f"{name}/zeros"] += zeros
                    stats[f"{name}/elements"] += elements
        return stats

    def score(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Return ``1 - zeros / elements`` per channel (0 for a layer that saw no data)."""
        scores = {}
        for name in conv_layers(layers):
            zeros = stats[f"{name}/zeros"].to(torch.float64)
            elements = stats[f"{name}/elements"].to(torch.float64)
            scores[name] = torch.where(elements > 0, 1 - zeros / elements.clamp_min(1), 0.0)
        return scores


def _zeros(name: str, site: Tensor) -> tuple[Tensor, int]:
    """Per-channel count of ``site <= 0`` and the elements per channel."""
    return (site <= 0).sum(dim=(0, 2, 3)), site[:, 0].numel()
