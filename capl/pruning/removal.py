"""Plan -> network: physical channel removal, weight / kernel masks, class-subset heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.utils import prune
from torch_pruning import _helpers as tp_helpers

from capl.benchmark import masked_tensors
from capl.errors import ConfigError
from capl.models import cut_head, model_device
from capl.pruning._threads import single_threaded
from capl.pruning.plan_format import PruningPlan, fingerprint, plan_mask
from capl.pruning.tracing import blocked_reason, out_channel_fn, static_index_maps, trace


@single_threaded
def apply_plan(
    model: nn.Module, plan: PruningPlan, example_input: Tensor | None = None
) -> nn.Module:
    """Apply ``plan`` to ``model`` in place and return it.

    Structured plans remove channels physically through torch-pruning's dependency graph, group
    by group in the stored order (coupled convs, BNs, depthwise convs and gates together). Mask
    plans attach ``torch.nn.utils.prune`` masks, which keep pruned weights at zero through later
    training until :func:`make_masks_permanent`. Then the classifier is cut to ``head_rows``.
    Create optimizers after this call: pruned layers hold new parameters.

    Args:
        model: A network with the architecture the plan was made for (its weights may differ).
        plan: The plan.
        example_input: A batch for tracing; default zeros of ``plan.input_shape``.

    Raises:
        ConfigError: The model's architecture does not match the plan, or the plan is corrupt.
    """
    found = fingerprint(model)
    if found != plan.fingerprint:
        raise ConfigError(
            f"this network does not match the pruning plan (made for {plan.network}, fingerprint "
            f"{plan.fingerprint}, got {found}): build the same network (name, num_classes, "
            "small_input) before applying the plan"
        )
    if plan.granularity == "filter":
        if plan.removed:
            if example_input is None:
                param = next(model.parameters())
                example_input = torch.zeros(
                    1, *plan.input_shape, device=model_device(model), dtype=param.dtype
                )
            _remove_channels(model, plan.removed, example_input[:1])
    else:
        _attach_masks(model, plan)
    if plan.head_rows is not None:
        class_subset_head(model, plan.head_rows)
    return model


def _remove_channels(
    model: nn.Module, removed: list[tuple[str, list[int]]], example_input: Tensor
) -> None:
    """Remove every group's channels in one pass, all indices in the original numbering.

    The groups are resolved on the unpruned graph (index maps computed once), their
    per-layer removals merged, and each layer is cut once: no re-tracing between groups, which
    on concat-heavy networks (DenseNet) is most of the cost of removing group by group.
    """
    graph = trace(model, example_input)
    merged: dict[tuple[object, object], tuple[object, set[int], str]] = {}
    with static_index_maps():
        for key, idxs in removed:
            module = _checked_key(model, key, idxs)
            group = graph.get_pruning_group(module, out_channel_fn(graph, module), list(idxs))
            reason = blocked_reason(graph, group)
            if reason is not None:
                raise ConfigError(
                    f"pruning plan removes channels of {key} that cannot be removed ({reason}): "
                    "use the plan made for this network"
                )
            _merge(merged, group, key)
    combined = tp.Group()
    combined._DG = graph
    for dep, idxs, _ in merged.values():
        if idxs:
            combined.add_dep(dep, sorted(idxs))
    combined.prune(record_history=False)


def _merge(
    merged: dict[tuple[object, object], tuple[object, set[int], str]], group: tp.Group, key: str
) -> None:
    """Add ``group``'s removals (per target layer and handler) to ``merged``.

    Groups own disjoint channels: two plan entries removing the same channel of a layer name
    one coupled group twice, which only a corrupt plan does.
    """
    own: dict[tuple[object, object], tuple[object, set[int]]] = {}
    for dep, idxs in group.items:
        entry = own.setdefault((dep.target, dep.handler), (dep, set()))
        entry[1].update(int(i) for i in tp_helpers.to_plain_idxs(idxs) if idxs)
    for pair, (dep, idxs) in own.items():
        _, done, first = merged.setdefault(pair, (dep, set(), key))
        if done & idxs:
            raise ConfigError(
                f"pruning plan names {first} and {key}, whose channels are coupled: use the plan "
                "made for this network"
            )
        done.update(idxs)


def _checked_key(model: nn.Module, key: str, idxs: list[int]) -> nn.Conv2d:
    module = _submodule(model, key)
    if not isinstance(module, nn.Conv2d):
        raise ConfigError(
            f"pruning plan names {key}, which is not a Conv2d: use the plan made for this network"
        )
    channels = module.out_channels
    if len(set(idxs)) != len(idxs) or not all(0 <= i < channels for i in idxs):
        raise ConfigError(
            f"pruning plan removes invalid channels of {key} ({channels} channels): use the "
            "plan made for this network"
        )
    if len(idxs) >= channels:
        raise ConfigError(f"pruning plan removes every channel of {key}: use a valid plan")
    return module


def _attach_masks(model: nn.Module, plan: PruningPlan) -> None:
    for name in plan.masks:
        module = _submodule(model, name)
        keep = plan_mask(plan, name)
        weight = module.weight
        if plan.granularity == "kernel":
            keep = keep[..., None, None].expand_as(weight)
        if keep.shape != weight.shape:
            raise ConfigError(
                f"pruning plan mask for {name} has shape {tuple(keep.shape)}, the layer's weight "
                f"{tuple(weight.shape)}: use the plan made for this network"
            )
        prune.custom_from_mask(module, "weight", keep.to(weight.device, weight.dtype))


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ConfigError(
            f"pruning plan names layer {name}, which this network lacks: use the plan made for "
            "this network"
        ) from None


def class_subset_head(model: nn.Module, head_rows: Sequence[int]) -> None:
    """Cut the classifier to ``head_rows``, copying those rows (no re-initialisation).

    The cut network's logits equal the uncut one's logits at ``head_rows``, so a pruned k-way
    model starts from the base model's k-way predictions.
    """
    cut_head(model, list(head_rows))


def make_masks_permanent(model: nn.Module) -> nn.Module:
    """Fold every ``torch.nn.utils.prune`` mask into its parameter (zeros stay, masks go)."""
    for _, module, tensor_name in list(masked_tensors(model)):
        prune.remove(module, tensor_name)
    return model
