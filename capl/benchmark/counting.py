"""Counting: MACs (ptflops and conv/linear hooks), parameters, non-zeros, per-layer reports.

Masked models (``torch.nn.utils.prune``) are counted through their *effective* weights
(``orig * mask``), once; their MACs are the dense MACs, because a mask removes no computation
unless a sparse kernel exploits it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import torch
from torch import nn

from capl.benchmark._masks import deployable_copy, effective_tensor, masked_tensors

logger = logging.getLogger(__name__)

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
"""Layer types reported per layer and counted by :func:`count_conv_linear_macs`."""


def _shape(input_shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"input_shape must be positive (C, H, W) without batch, got {input_shape}")
    return shape


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass for one image, as ptflops counts them.

    ptflops' pytorch backend counts, through module hooks, convolutions and linear layers
    (with their bias additions) and also BN, activations and pooling (resnet18 at 224: about
    1.82G against 1.814G for conv+linear only). Its patching of ``torch.nn.functional`` is
    turned off because it double-counts activation modules; purely functional activations and
    pooling (cheap, no multiply-adds) are therefore not counted. It runs on a deep copy (masks
    made permanent, eval mode), so the model keeps its hooks, attributes and training flag.

    Args:
        model: The network.
        input_shape: ``(C, H, W)`` of one image, without the batch dimension.

    Returns:
        MACs per image.

    Raises:
        RuntimeError: If ptflops could not trace the model (its message is included).
    """
    from ptflops import get_model_complexity_info

    shape = _shape(input_shape)
    clone = deployable_copy(model)
    device = next((p.device for p in clone.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in clone.parameters()), torch.float32)

    def constructor(res: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros((1, *res), dtype=dtype, device=device)

    captured = io.StringIO()
    # ptflops reports failures with print(); keep library output quiet and surface it instead.
    with contextlib.redirect_stdout(captured), torch.inference_mode():
        macs, _ = get_model_complexity_info(
            clone,
            shape,
            print_per_layer_stat=False,
            as_strings=False,
            input_constructor=constructor,
            ost=captured,
            verbose=False,
            backend="pytorch",
            # ptflops also patches torch.nn.functional; nn.ReLU etc. call the patched F.relu
            # and would then be counted twice (module hook + functional patch).
            backend_specific_config={"count_functional": False},
        )
    if macs is None:
        raise RuntimeError(f"ptflops failed to count MACs: {captured.getvalue().strip()}")
    return int(macs)


def count_conv_linear_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of convolutions and linear layers only, for one image (torchvision's convention).

    Conv: ``output elements * in_channels / groups * prod(kernel)``; Linear:
    ``output elements * in_features``. Biases, BN, activations and pooling are not counted.
    Matches torchvision's published figures (resnet18 at 224: 1.814G).

    Args:
        model: The network; it is run once in eval mode on a copy.
        input_shape: ``(C, H, W)`` of one image.

    Returns:
        MACs per image.
    """
    shape = _shape(input_shape)
    clone = deployable_copy(model)
    total = 0

    def conv_hook(module: nn.modules.conv._ConvNd, _inp: Any, output: torch.Tensor) -> None:
        nonlocal total
        kernel = 1
        for k in module.kernel_size:
            kernel *= int(k)
        total += output.numel() * (module.in_channels // module.groups) * kernel

    def linear_hook(module: nn.Linear, _inp: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    for module in clone.modules():
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            module.register_forward_hook(conv_hook)
        elif isinstance(module, nn.Linear):
            module.register_forward_hook(linear_hook)
    device = next((p.device for p in clone.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in clone.parameters()), torch.float32)
    with torch.inference_mode():
        clone(torch.zeros((1, *shape), dtype=dtype, device=device))
    return int(total)


def _effective_named_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters with each masked ``<name>_orig`` replaced by its effective ``<name>``."""
    effective: dict[int, tuple[str, torch.Tensor]] = {}
    for module_name, module, tensor_name in masked_tensors(model):
        orig = getattr(module, f"{tensor_name}_orig")
        prefix = f"{module_name}." if module_name else ""
        effective[id(orig)] = (f"{prefix}{tensor_name}", effective_tensor(module, tensor_name))
    out = []
    for name, param in model.named_parameters():  # named_parameters() skips shared duplicates
        out.append(effective.get(id(param), (name, param.detach())))
    return out


def count_params(model: nn.Module) -> int:
    """All parameters (trainable or not), each shared parameter once, masks not counted.

    A masked tensor counts once (``weight_orig`` has the size of the effective ``weight``;
    the mask is a buffer).
    """
    return int(sum(p.numel() for p in model.parameters()))


def count_nonzero_params(model: nn.Module) -> int:
    """Non-zero entries of all parameters, using effective (masked) weights."""
    return int(sum(int(torch.count_nonzero(t)) for _, t in _effective_named_parameters(model)))


def _layer_weight(module: nn.Module, tensor: str) -> torch.Tensor | None:
    if hasattr(module, f"{tensor}_mask"):
        return effective_tensor(module, tensor)
    value = getattr(module, tensor, None)
    return value.detach() if isinstance(value, torch.Tensor) else None


def layer_report(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per prunable layer (Conv2d and Linear): width, parameters and non-zeros.

    Linear layers use the same keys as convolutions (``in_features`` -> ``in_channels``,
    ``out_features`` -> ``out_channels``) so reports compare across types.

    Args:
        model: The network (masked or not); not modified.

    Returns:
        ``{qualified_name: {"type", "in_channels", "out_channels", "groups", "params",
        "nonzero", "live_out_channels"}}`` in module order. ``live_out_channels`` counts output
        channels whose weight slice has at least one non-zero (a filter zeroed by a mask is
        not live).
    """
    report: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        weight = _layer_weight(module, "weight")
        bias = _layer_weight(module, "bias")
        params = (weight.numel() if weight is not None else 0) + (
            bias.numel() if bias is not None else 0
        )
        nonzero = (int(torch.count_nonzero(weight)) if weight is not None else 0) + (
            int(torch.count_nonzero(bias)) if bias is not None else 0
        )
        if weight is not None and weight.numel():
            live = int((weight.reshape(weight.shape[0], -1) != 0).any(dim=1).sum())
        else:
            live = 0
        if isinstance(module, nn.Conv2d):
            entry = {
                "type": "Conv2d",
                "in_channels": int(module.in_channels),
                "out_channels": int(module.out_channels),
                "groups": int(module.groups),
                "kernel_size": [int(k) for k in module.kernel_size],
            }
        else:
            entry = {
                "type": "Linear",
                "in_channels": int(module.in_features),
                "out_channels": int(module.out_features),
                "groups": 1,
                "kernel_size": [],
            }
        entry.update({"params": int(params), "nonzero": int(nonzero), "live_out_channels": live})
        report[name] = entry
    return report


def _fraction_removed(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return 1.0 - after / before


def per_layer_diff(
    before: nn.Module | dict[str, dict[str, Any]], after: nn.Module | dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Compare two models (or their :func:`layer_report` results) layer by layer.

    Each entry leads with the contract's summary ``"kind"``, ``"before"``, ``"after"``: live
    output channels (``kind="channels"``) when the number of live channels changed or nothing
    changed, else non-zero weights (``kind="weights"``, unstructured/kernel masks).

    Args:
        before: Base model or its report.
        after: Pruned model or its report.

    Returns:
        ``{name: {"kind", "before", "after", "type", "out_channels_before", "out_channels_after",
        "live_out_channels_before", "live_out_channels_after", "nonzero_before",
        "nonzero_after", "params_before", "params_after", "channels_removed",
        "nonzero_removed"}}``; ``*_removed`` are fractions of the base value (live channels and
        non-zero weights, so masks count too). A layer absent on one side has ``None`` there.
    """
    if isinstance(before, nn.Module):
        before = layer_report(before)
    if isinstance(after, nn.Module):
        after = layer_report(after)
    names = list(before) + [n for n in after if n not in before]
    diff: dict[str, dict[str, Any]] = {}
    for name in names:
        b = before.get(name)
        a = after.get(name)

        def get(rep: dict[str, Any] | None, key: str) -> Any:
            return None if rep is None else rep.get(key)

        live_b, live_a = get(b, "live_out_channels"), get(a, "live_out_channels")
        nz_b, nz_a = get(b, "nonzero"), get(a, "nonzero")
        weights_only = live_b == live_a and nz_b != nz_a and None not in (nz_b, nz_a)
        diff[name] = {
            "kind": "weights" if weights_only else "channels",
            "before": nz_b if weights_only else live_b,
            "after": nz_a if weights_only else live_a,
            "type": (b or a or {}).get("type"),
            "out_channels_before": get(b, "out_channels"),
            "out_channels_after": get(a, "out_channels"),
            "live_out_channels_before": get(b, "live_out_channels"),
            "live_out_channels_after": get(a, "live_out_channels"),
            "nonzero_before": get(b, "nonzero"),
            "nonzero_after": get(a, "nonzero"),
            "params_before": get(b, "params"),
            "params_after": get(a, "params"),
            "channels_removed": _fraction_removed(
                get(b, "live_out_channels"), get(a, "live_out_channels")
            ),
            "nonzero_removed": _fraction_removed(get(b, "nonzero"), get(a, "nonzero")),
        }
    return diff
