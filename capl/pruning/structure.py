"""Prunable structure of a network: dependency groups, forward order and per-channel costs.

Channels coupled by the computation (a conv and its BatchNorm, every conv feeding a residual add,
a depthwise conv and the conv before it, a squeeze-excitation gate and the channels it scales)
must be removed together. torch-pruning's :class:`~torch_pruning.DependencyGraph` finds these
groups; this module turns them into plain data (names, index maps, costs) that the planner can
reuse across many ratios without tracing again.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from capl.models import find_classifier
from capl.strategies.base import run_in_eval

OUT, IN = "out", "in"


@dataclass(frozen=True)
class LayerCost:
    """Shape facts of one Conv2d / Linear / BatchNorm2d layer, per sample.

    Attributes:
        kind: ``"conv"``, ``"linear"`` or ``"bn"``.
        out_channels: Output channels (features).
        in_channels: Input channels (features).
        groups: Conv groups (1 for linear / bn).
        kernel: Kernel elements ``kh * kw`` (1 for linear / bn).
        positions: Output positions per sample (``H * W`` for a conv).
        bias: Whether the layer has a bias (affine for bn).
        order: Position in forward order among Conv2d/Linear layers (BNs come after all).
    """

    kind: str
    out_channels: int
    in_channels: int
    groups: int
    kernel: int
    positions: int
    bias: bool
    order: int

    @property
    def depthwise(self) -> bool:
        """A depthwise conv: each output channel reads only its own input channel."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.out_channels

    def macs(self, out: int, inp: int) -> int:
        """Multiply-adds per sample with ``out`` output and ``inp`` input channels left."""
        if self.kind == "bn":
            return 0
        if self.depthwise:
            return self.positions * out * self.kernel
        return self.positions * out * (inp // self.groups) * self.kernel

    def params(self, out: int, inp: int) -> int:
        """Parameter count with ``out`` output and ``inp`` input channels left."""
        if self.kind == "bn":
            return 2 * out if self.bias else 0
        weights = out * self.kernel * (1 if self.depthwise else inp // self.groups)
        return weights + (out if self.bias else 0)


@dataclass
class ChannelGroup:
    """Output channels removed together.

    Attributes:
        key: Name of the first conv (forward order) whose output channels the group removes;
            plans key removed indices by it and they index its output channels.
        channels: Number of channels (length of the key conv's output).
        convs: ``(conv name, indices in that conv, matching key-channel indices)`` for every
            Conv2d whose output channels the group removes (depthwise ones included).
        members: Names of every module whose output channels the group removes (convs, BNs).
        items: ``(layer name, "out"|"in", multiplicity)`` for the cost model: each removed key
            channel removes ``multiplicity[c]`` (or the int) units along that layer's dimension.
    """

    key: str
    channels: int
    convs: list[tuple[str, Tensor, Tensor]]
    members: list[str]
    items: list[tuple[str, str, Tensor | int]] = field(default_factory=list)


@dataclass
class Structure:
    """Everything the planner needs to know about a network, computed once per model.

    Attributes:
        input_shape: Per-sample input shape used for tracing.
        conv_order: Conv2d names in forward order.
        layers: Shape facts of Conv2d, Linear and BatchNorm2d layers, by name.
        other_params: Parameters outside those layers (never changed by pruning).
        groups: All channel groups except the classifier's outputs, ordered by key conv.
        classifier: Name of the final Linear.
        names: All module names (to validate ignore patterns).
    """

    input_shape: tuple[int, ...]
    conv_order: list[str]
    layers: dict[str, LayerCost]
    other_params: int
    groups: list[ChannelGroup]
    classifier: str
    names: list[str]

    def totals(self) -> tuple[int, int]:
        """Conv+linear MACs per sample and total parameters of the unpruned network."""
        macs = sum(c.macs(c.out_channels, c.in_channels) for c in self.layers.values())
        params = sum(c.params(c.out_channels, c.in_channels) for c in self.layers.values())
        return macs, params + self.other_params

    def cost(self, removed: dict[tuple[str, str], int]) -> tuple[int, int]:
        """MACs per sample and parameters after removing units.

        Args:
            removed: Units removed per ``(layer name, "out"|"in")``.
        """
        macs = params = 0
        for name, c in self.layers.items():
            out = c.out_channels - removed.get((name, OUT), 0)
            inp = c.in_channels - removed.get((name, IN), 0)
            if c.depthwise:
                inp = out
            macs += c.macs(out, inp)
            params += c.params(out, inp)
        return macs, params + self.other_params


def _signature(model: nn.Module, input_shape: tuple[int, ...]) -> tuple:
    shapes = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    return (input_shape, shapes)


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Structure]] = weakref.WeakKeyDictionary()


def analyse(model: nn.Module, example_input: Tensor) -> Structure:
    """The model's :class:`Structure`, cached per model (re-traced when its shapes change).

    Args:
        model: The network (left unchanged; traced in eval mode, modes restored).
        example_input: A batch; only its first sample's shape matters.
    """
    shape = tuple(example_input.shape[1:])
    sig = _signature(model, shape)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == sig:
        return hit[1]
    structure = _analyse(model, example_input[:1])
    _CACHE[model] = (sig, structure)
    return structure


def layer_shapes(model: nn.Module, example_input: Tensor) -> dict[str, LayerCost]:
    """Shape facts of every Conv2d / Linear (forward order) and BatchNorm2d, from one forward."""
    modules = dict(model.named_modules())
    seen: dict[str, LayerCost] = {}
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
                    len(seen),
                )  # fmt: skip
            else:
                seen[name] = LayerCost(
                    "linear", module.out_features, module.in_features, 1, 1,
                    output.numel() // (batch * module.out_features), module.bias is not None,
                    len(seen),
                )  # fmt: skip

        return record

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in modules.items()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with run_in_eval(model), torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    for name, m in modules.items():
        if isinstance(m, nn.BatchNorm2d):
            seen[name] = LayerCost(
                "bn", m.num_features, m.num_features, 1, 1, 0, m.affine, len(seen)
            )
    return seen


def trace(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    """A torch-pruning dependency graph of ``model``, traced in eval mode with grad enabled.

    Eval mode keeps BatchNorm running statistics untouched and stochastic layers inert.
    """
    with run_in_eval(model), torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_input, verbose=False)


def out_channel_fn(graph: tp.DependencyGraph, module: nn.Module) -> object:
    """torch-pruning's output-channel pruning function for ``module``."""
    return graph.get_pruner_of_module(module).prune_out_channels


def _analyse(model: nn.Module, example_input: Tensor) -> Structure:
    layers = layer_shapes(model, example_input)
    conv_order = sorted(
        (n for n, c in layers.items() if c.kind == "conv"), key=lambda n: layers[n].order
    )
    classifier_name, classifier = find_classifier(model)
    covered = {id(p) for name in layers for p in model.get_submodule(name).parameters()}
    other = sum(p.numel() for p in model.parameters() if id(p) not in covered)
    groups: list[ChannelGroup] = []
    graph = trace(model, example_input)
    names = graph._module2name
    raw = list(graph.get_all_groups(ignored_layers=[classifier], root_module_types=[nn.Conv2d]))
    for group in raw:
        convs_out = [
            names[it.dep.target.module]
            for it in group.items
            if isinstance(it.dep.target.module, nn.Conv2d)
            and graph.is_out_channel_pruning_fn(it.dep.handler)
        ]
        key = min(convs_out, key=lambda n: layers[n].order if n in layers else 1 << 30)
        module = model.get_submodule(key)
        # re-root at the key conv so root indices are that conv's output channels
        full = graph.get_pruning_group(
            module, out_channel_fn(graph, module), list(range(module.out_channels))
        )
        groups.append(_to_group(graph, full, key, module.out_channels, layers))
    groups.sort(key=lambda g: layers[g.key].order)
    return Structure(
        input_shape=tuple(example_input.shape[1:]),
        conv_order=conv_order,
        layers=layers,
        other_params=other,
        groups=groups,
        classifier=classifier_name,
        names=[n for n, _ in model.named_modules() if n],
    )


def _to_group(
    graph: tp.DependencyGraph,
    group: tp.Group,
    key: str,
    channels: int,
    layers: dict[str, LayerCost],
) -> ChannelGroup:
    names = graph._module2name
    out = ChannelGroup(key=key, channels=channels, convs=[], members=[])
    for it in group.items:
        module = it.dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue  # functional nodes (add, mul, flatten) own no parameters
        name = names[module]
        is_out = graph.is_out_channel_pruning_fn(it.dep.handler)
        idxs = torch.as_tensor(list(it.idxs), dtype=torch.long)
        roots = torch.as_tensor(list(it.root_idxs), dtype=torch.long)
        if is_out:
            out.members.append(name)
            if isinstance(module, nn.Conv2d):
                out.convs.append((name, idxs, roots))
        if name in layers:
            mult = torch.bincount(roots, minlength=channels)
            uniform = bool((mult == mult[0]).all())
            out.items.append((name, OUT if is_out else IN, int(mult[0]) if uniform else mult))
    return out
