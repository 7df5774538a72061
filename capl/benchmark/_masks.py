"""Helpers for models pruned with ``torch.nn.utils.prune`` (``<name>_orig`` + ``<name>_mask``).

A masked tensor lives in the state dict twice (dense original and mask) while the module
attribute ``<name>`` is recomputed as ``orig * mask`` by a forward pre-hook. Every benchmark
measures the *effective* model: the product, stored once, with no hook overhead.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import prune


def masked_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """Yield ``(module_name, module, tensor_name)`` for every prune-reparametrised tensor.

    Args:
        model: Any module.

    Yields:
        The qualified module name, the module and the name of the masked tensor (``"weight"``).
    """
    for module_name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                yield module_name, module, hook._tensor_name


def has_masks(model: nn.Module) -> bool:
    """Whether ``model`` holds any ``torch.nn.utils.prune`` reparametrisation."""
    return next(masked_tensors(model), None) is not None


def effective_tensor(module: nn.Module, tensor_name: str) -> torch.Tensor:
    """Return ``orig * mask`` for a masked tensor, computed now (never a stale attribute)."""
    orig = getattr(module, f"{tensor_name}_orig")
    mask = getattr(module, f"{tensor_name}_mask")
    return (orig * mask).detach()


def effective_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The state dict with masks made permanent: ``<name>`` instead of ``_orig`` + ``_mask``.

    Keys keep their order; the model is not modified.

    Args:
        model: Any module, masked or not.

    Returns:
        A new ordered dict of detached tensors (shared storage for unmasked entries).
    """
    state = model.state_dict(keep_vars=False)
    replace: dict[str, tuple[str, torch.Tensor]] = {}
    drop: set[str] = set()
    for module_name, module, tensor_name in masked_tensors(model):
        prefix = f"{module_name}." if module_name else ""
        replace[f"{prefix}{tensor_name}_orig"] = (
            f"{prefix}{tensor_name}",
            effective_tensor(module, tensor_name),
        )
        drop.add(f"{prefix}{tensor_name}_mask")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        if key in drop:
            continue
        if key in replace:
            new_key, new_value = replace[key]
            out[new_key] = new_value
        else:
            out[key] = value.detach()
    return out


def deployable_copy(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """A deep copy in eval mode with masks made permanent, optionally moved to ``device``.

    This is what would be deployed: exporting or timing the hooked model would measure the
    ``orig * mask`` product on every forward, which no deployment runs.

    Args:
        model: The model to copy; it is not modified.
        device: Where to put the copy; ``None`` keeps the model's device.

    Returns:
        The copy, in eval mode, with ``requires_grad`` off.
    """
    # The hooked attribute ``<name>`` is a non-leaf tensor (orig * mask) that deepcopy refuses;
    # hand deepcopy its detached value instead.
    memo: dict[int, object] = {}
    for _, module, tensor_name in masked_tensors(model):
        current = module.__dict__.get(tensor_name)
        if isinstance(current, torch.Tensor):
            memo[id(current)] = effective_tensor(module, tensor_name)
    clone = copy.deepcopy(model, memo)
    for _, module, tensor_name in list(masked_tensors(clone)):
        prune.remove(module, tensor_name)
    clone.eval()
    for param in clone.parameters():
        param.requires_grad_(False)
    if device is not None:
        clone.to(device)
    return clone
