"""The one selection path: which layers a criterion scores, its statistics, its scores."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import Tensor, nn

from capl.criteria.base import Criterion
from capl.pruning.structure import prunable_layers

__all__ = ["select_scores"]

Stats = dict[str, Tensor]


def select_scores(
    criterion: Criterion,
    network: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    rows: Sequence[int],
    reduce: Callable[[Stats], Stats] | None = None,
) -> dict[str, Tensor]:
    """Score ``network``'s prunable layers with ``criterion`` on ``batches``.

    Data-free criteria never touch ``batches``. ``reduce`` combines the summed statistics
    before scoring (e.g. an all-reduce across DDP ranks, each of which saw its own shard).

    Args:
        criterion: The criterion.
        network: The network (left as it was: modes, weights and buffers).
        batches: Calibration ``(images, subset labels)`` batches.
        rows: Logit row of each subset label.
        reduce: Optional combination of the statistics across processes.

    Returns:
        Per layer name, the criterion's scores (:meth:`Criterion.score`).
    """
    layers = prunable_layers(network, criterion.granularity)
    stats: Stats = {}
    if criterion.requires_data:
        stats = criterion.collect(network, batches, layers, list(rows))
        if reduce is not None:
            stats = reduce(stats)
    return criterion.score(network, layers, stats)
