"""Tracing a network for torch-pruning: forwards that reach auxiliary heads, channel shuffles.

Two torchvision families need more than a plain eval-mode trace:

- GoogLeNet and Inception v3 run their auxiliary heads only when the network is in training
  mode. The trace switches on the top-level ``training`` flag alone (every submodule stays in
  eval mode: BatchNorm statistics untouched, dropout inert), so the heads' inputs are seen as
  consumers of the channels they read and are pruned with them.
- ShuffleNetV2's ``channel_shuffle`` (a view / transpose / view) breaks torch-pruning's index
  mapping (ZeroDivisionError). While tracing it is replaced by an identity that records the
  tensor it shuffles; every dependency group whose channels pass it is then known and left
  whole (the shuffle interleaves the channels of two branches, so removing some of them would
  reorder the rest), while all other groups trace exactly as they run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch_pruning as tp
import torch_pruning.dependency.index_mapping as tp_index_mapping
from torch import Tensor, nn

from capl.criteria.base import run_in_eval
from capl.errors import ConfigError
from capl.models import aux_heads

_SHUFFLE_MODULES: tuple[tuple[str, str], ...] = (
    ("torchvision.models.shufflenetv2", "channel_shuffle"),
)


@contextlib.contextmanager
def shuffles_as_identity() -> Iterator[list[Any]]:
    """Replace the known channel shuffles by identities; yields the shuffled tensors' grad_fns."""
    seen: list[Any] = []

    def identity(x: Tensor, groups: int) -> Tensor:
        seen.append(x.grad_fn)
        return x

    saved = []
    for module_name, attr in _SHUFFLE_MODULES:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attr):
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, identity)
    try:
        yield seen
    finally:
        for module, attr, fn in saved:
            setattr(module, attr, fn)


def forward_all(model: nn.Module, example_input: Tensor) -> Any:
    """One forward in eval mode that also runs the auxiliary heads (if the network has any).

    Only the top-level module's ``training`` flag is set, which is what GoogLeNet and Inception
    v3 test before calling their heads; the caller has put every module in eval mode.
    """
    if not aux_heads(model):
        return model(example_input)
    model.training = True
    try:
        return model(example_input)
    finally:
        model.training = False


def trace(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    """A torch-pruning dependency graph of ``model``, traced in eval mode with grad enabled.

    Eval mode keeps BatchNorm running statistics untouched and stochastic layers inert;
    auxiliary heads are reached (:func:`forward_all`). The graph's ``capl_shuffled`` attribute
    holds the grad_fns of the tensors fed to a channel shuffle (see :func:`blocked_reason`).

    Raises:
        ConfigError: torch-pruning cannot trace the network.
    """
    with run_in_eval(model), torch.enable_grad(), shuffles_as_identity() as shuffled:
        try:
            graph = tp.DependencyGraph().build_dependency(
                model, example_input, forward_fn=forward_all, verbose=False
            )
        except Exception as err:  # torch-pruning raises many types on layers it cannot map
            raise ConfigError(
                f"cannot trace the channel dependencies of {type(model).__name__} "
                f"({type(err).__name__} in torch-pruning: {err}): it has a layer capl cannot "
                "prune; use a torchvision CNN or ignore the layers around it"
            ) from err
    graph.capl_shuffled = set(shuffled)
    if shuffled:
        _chunk_offsets(graph)
    return graph


def _chunk_offsets(graph: tp.DependencyGraph) -> None:
    """Give every channel chunk its real offsets (torch-pruning 1.6 guesses them wrongly here).

    torch-pruning looks for ``_saved_self_sizes`` on a chunk's ``SplitBackward0``, which this
    torch calls ``_saved_self_sym_sizes``, and then infers the chunk sizes from the consumers:
    ShuffleNet's first half goes straight into a concat, so its size comes out as the concat's
    and the index maps run out of range. The chunks of a shuffle network only feed groups that
    pass the shuffle, which stay whole, so the offsets need only be the real ones.
    """
    for node in graph.module2node.values():
        fn = node.grad_fn
        if node.type != tp.ops.OPTYPE.SPLIT or not hasattr(fn, "_saved_split_size"):
            continue
        if getattr(fn, "_saved_dim", None) != 1:
            continue
        size, total = int(fn._saved_split_size), int(fn._saved_self_sym_sizes[1])
        node.module.offsets = [*range(0, total, size), total]
    tp_index_mapping.update_index_mapping(graph)


@contextlib.contextmanager
def static_index_maps() -> Iterator[None]:
    """Skip torch-pruning's index-map refresh in ``get_pruning_group`` while nothing is pruned.

    ``DependencyGraph.get_pruning_group`` recomputes every concat / split index map of the
    graph before each group (about 65 ms per call on DenseNet-121, whose concats hold many
    inputs). The maps depend only on the current channel counts, which analysis does not
    change, so the ones ``build_dependency`` computed stay valid. Removal must not use this:
    after a group is pruned the maps change.
    """
    saved = tp_index_mapping.update_index_mapping
    tp_index_mapping.update_index_mapping = _keep_maps
    try:
        yield
    finally:
        tp_index_mapping.update_index_mapping = saved


def _keep_maps(graph: tp.DependencyGraph) -> None:
    return None


def out_channel_fn(graph: tp.DependencyGraph, module: nn.Module) -> object:
    """torch-pruning's output-channel pruning function for ``module``."""
    return graph.get_pruner_of_module(module).prune_out_channels


def grouped_conv(module: object) -> bool:
    """A grouped conv whose groups span several channels (not depthwise, not plain)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and not (module.groups == module.in_channels == module.out_channels)
    )


def blocked_reason(graph: tp.DependencyGraph, group: tp.Group) -> str | None:
    """Why torch-pruning's ``group`` (with its indices) must not be removed, or ``None``.

    A group is blocked when its channels pass a channel shuffle, or when it removes different
    local channels in the groups of a grouped conv (every conv group must lose the same ones).
    """
    shuffled = getattr(graph, "capl_shuffled", set())
    names = graph._module2name
    for item in group.items:
        node = item.dep.target
        if shuffled and node.grad_fn in shuffled:
            return "its channels pass a channel shuffle"
        module = node.module
        if not grouped_conv(module) or not item.idxs:
            continue
        is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
        width = (module.out_channels if is_out else module.in_channels) // module.groups
        idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
        per_group = [set((idxs[idxs // width == g] % width).tolist()) for g in range(module.groups)]
        if any(s != per_group[0] for s in per_group):
            dim = "output" if is_out else "input"
            return (
                f"it removes different {dim} channels in the {module.groups} groups of the "
                f"grouped conv {names.get(module, module)}"
            )
    return None
