"""Shape facts of the layers whose size follows their channels, for the cost model.

:func:`layer_shapes` reads one eval-mode forward (what inference computes); the structure adds
:func:`extra_layers` (auxiliary heads, channel norms, loose parameters), which pruning also
resizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn

from capl.criteria.base import run_in_eval
from capl.models import aux_heads
from capl.pruning.tracing import forward_all


@dataclass(frozen=True)
class LayerCost:
    """Shape facts of one layer whose size follows its channels, per sample.

    Attributes:
        kind: ``"conv"``, ``"linear"``, ``"bn"``, ``"norm"`` (a LayerNorm / GroupNorm over the
            channels) or ``"param"`` (a parameter outside such layers, e.g. ConvNeXt's
            ``layer_scale``, pruned along one dimension).
        out_channels: Output channels (features; for bn / norm / param: the channels).
        in_channels: Input channels (features).
        groups: Conv groups (1 for the other kinds).
        kernel: Kernel elements ``kh * kw``; for norm / param the parameters per channel.
        positions: Output positions per sample (``H * W`` for a conv).
        bias: Whether the layer has a bias (affine for bn).
        order: Position in forward order among Conv2d/Linear layers (the others come after).
        train_only: The layer runs only in training mode (auxiliary heads): it has parameters
            but adds no inference MACs.
    """

    kind: str
    out_channels: int
    in_channels: int
    groups: int
    kernel: int
    positions: int
    bias: bool
    order: int
    train_only: bool = False

    @property
    def depthwise(self) -> bool:
        """A depthwise conv: each output channel reads only its own input channel.

        Pruning removes its input and output channels together (and as many groups).
        """
        return self.kind == "conv" and self.groups > 1 and self.groups == self.out_channels

    @property
    def grouped(self) -> bool:
        """A grouped conv that is not depthwise: pruning keeps its groups, each one narrower."""
        return self.kind == "conv" and self.groups > 1 and not self.depthwise

    def macs(self, out: int, inp: int) -> int:
        """Multiply-adds per sample with ``out`` output and ``inp`` input channels left.

        A grouped conv keeps its groups (every group loses the same channels), so each output
        channel reads ``inp / groups`` inputs.
        """
        if self.kind not in ("conv", "linear") or self.train_only:
            return 0
        if self.depthwise:
            return self.positions * out * self.kernel
        return self.positions * out * (inp // self.groups) * self.kernel

    def params(self, out: int, inp: int) -> int:
        """Parameter count with ``out`` output and ``inp`` input channels left."""
        if self.kind == "bn":
            return 2 * out if self.bias else 0
        if self.kind in ("norm", "param"):
            return out * self.kernel
        weights = out * self.kernel * (1 if self.depthwise else inp // self.groups)
        return weights + (out if self.bias else 0)


def layer_shapes(model: nn.Module, example_input: Tensor) -> dict[str, LayerCost]:
    """Shape facts of every Conv2d / Linear (forward order) and BatchNorm2d, from one forward.

    The forward runs in eval mode (what inference computes); layers it does not reach, such as
    auxiliary heads, are absent.
    """
    seen: dict[str, LayerCost] = {}
    _record_shapes(model, example_input, _plain_forward, seen, train_only=False)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            seen[name] = LayerCost(
                "bn", m.num_features, m.num_features, 1, 1, 0, m.affine, len(seen)
            )
    return seen


def _plain_forward(model: nn.Module, example_input: Tensor) -> object:
    return model(example_input)


def _record_shapes(
    model: nn.Module,
    example_input: Tensor,
    forward: Callable[..., object],
    seen: dict[str, LayerCost],
    train_only: bool,
) -> None:
    """Add a :class:`LayerCost` for every Conv2d / Linear that ``forward`` reaches first."""
    batch = example_input.shape[0]

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if name in seen:
                return
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                seen[name] = LayerCost(
                    "conv", module.out_channels, module.in_channels, module.groups, kh * kw,
                    output.numel() // (batch * module.out_channels), module.bias is not None,
                    len(seen), train_only,
                )  # fmt: skip
            else:
                seen[name] = LayerCost(
                    "linear", module.out_features, module.in_features, 1, 1,
                    output.numel() // (batch * module.out_features), module.bias is not None,
                    len(seen), train_only,
                )  # fmt: skip

        return record

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with run_in_eval(model), torch.no_grad():
            forward(model, example_input)
    finally:
        for h in handles:
            h.remove()


def extra_layers(
    model: nn.Module,
    example_input: Tensor,
    graph: tp.DependencyGraph,
    layers: dict[str, LayerCost],
) -> dict[str, LayerCost]:
    """Auxiliary-head layers, channel norms and loose parameters, after ``layers``."""
    seen = dict(layers)
    if aux_heads(model):
        _record_shapes(model, example_input, forward_all, seen, train_only=True)
    for name, m in model.named_modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and _channel_norm_width(m):
            per_channel = sum(p is not None for p in (m.weight, m.bias))
            width = _channel_norm_width(m)
            seen[name] = LayerCost("norm", width, width, 1, per_channel, 0, False, len(seen))
    for param, dim in graph.unwrapped_parameters:
        name = graph._param_to_name.get(param)
        if name is not None:
            width = int(param.shape[dim])
            per = param.numel() // width
            seen[name] = LayerCost("param", width, width, 1, per, 0, False, len(seen))
    return {n: c for n, c in seen.items() if n not in layers}


def _channel_norm_width(module: nn.Module) -> int:
    """Channels of a LayerNorm over one dimension or of a GroupNorm; 0 otherwise."""
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    shape = tuple(module.normalized_shape)
    return shape[0] if len(shape) == 1 else 0


def covered_params(model: nn.Module, layers: dict[str, LayerCost]) -> set[int]:
    """Ids of the parameters the cost model counts through ``layers``."""
    params = dict(model.named_parameters())
    covered = set()
    for name, c in layers.items():
        if c.kind == "param":
            covered.add(id(params[name]))
        else:
            covered.update(id(p) for p in model.get_submodule(name).parameters())
    return covered
