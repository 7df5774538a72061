"""Prunable structure of a network: dependency groups, forward order and per-channel costs.

Channels coupled by the computation (a conv and its BatchNorm, every conv feeding a residual add,
a depthwise conv and the conv before it, a squeeze-excitation gate and the channels it scales,
the inputs of auxiliary heads, a LayerNorm over channels) must be removed together.
torch-pruning's :class:`~torch_pruning.DependencyGraph` finds these groups; this module turns
them into plain data (names, index maps, removal units, costs) that the planner can reuse across
many ratios without tracing again. Grouped convs tie channels into units: a group removes the
same local channels in every conv group. Groups whose channels pass a channel shuffle, and the
insides of auxiliary heads, are kept whole.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from capl.architectures import check_prunable
from capl.models import aux_classifiers, aux_heads, find_classifier
from capl.pruning.shapes import LayerCost, covered_params, extra_layers, layer_shapes
from capl.pruning.tracing import (
    blocked_reason,
    grouped_conv,
    out_channel_fn,
    static_index_maps,
    trace,
)

__all__ = [
    "IN",
    "OUT",
    "ChannelGroup",
    "LayerCost",
    "Structure",
    "analyse",
    "layer_shapes",
    "out_channel_fn",
    "trace",
]

OUT, IN = "out", "in"


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
        units: Key-channel indices removed together, ``[units, unit size]`` (ascending in a
            unit, units by their first channel), or ``None`` when every channel is its own
            unit. A grouped conv ties the channels at the same local index of its groups.
        renormalised: LayerNorm / GroupNorm layers normalising these channels: removing some
            changes the statistics of the rest, so the pruned network is not the original
            with the channels zeroed.
    """

    key: str
    channels: int
    convs: list[tuple[str, Tensor, Tensor]]
    members: list[str]
    items: list[tuple[str, str, Tensor | int]] = field(default_factory=list)
    units: Tensor | None = None
    renormalised: list[str] = field(default_factory=list)

    @property
    def unit(self) -> int:
        """Channels per removal unit (1 unless grouped convs tie channels)."""
        return 1 if self.units is None else int(self.units.shape[1])


@dataclass
class Structure:
    """Everything the planner needs to know about a network, computed once per model.

    Attributes:
        input_shape: Per-sample input shape used for tracing.
        conv_order: Conv2d names in forward order.
        layers: Shape facts of the Conv2d, Linear and BatchNorm2d layers of the inference
            forward, by name (:func:`layer_shapes`).
        other_params: Parameters outside ``layers`` and ``extra`` (never changed by pruning).
        groups: All prunable channel groups (not the classifiers' outputs), ordered by key conv.
        classifier: Name of the classifier (final Linear or 1x1 conv).
        names: All module names (to validate ignore patterns).
        aux_classifiers: Classifiers of auxiliary heads (cut with the main one).
        kept: Groups capl keeps whole by construction, key conv -> reason (channel shuffle,
            inside an auxiliary head).
        extra: Further layers pruning resizes, costed like ``layers``: auxiliary-head Conv2d /
            Linear (``train_only``), channel norms and loose parameters.
    """

    input_shape: tuple[int, ...]
    conv_order: list[str]
    layers: dict[str, LayerCost]
    other_params: int
    groups: list[ChannelGroup]
    classifier: str
    names: list[str]
    aux_classifiers: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    extra: dict[str, LayerCost] = field(default_factory=dict)

    @property
    def costed(self) -> dict[str, LayerCost]:
        """``layers`` and ``extra`` together: everything the cost model counts."""
        return {**self.layers, **self.extra}

    def head_removed(self, head_cut: int) -> dict[tuple[str, str], int]:
        """Outputs a class-subset head removes: ``head_cut`` rows of every classifier."""
        if not head_cut:
            return {}
        rows = self.layers[self.classifier].out_channels
        aux = [n for n in self.aux_classifiers if self.extra[n].out_channels == rows]
        return {(n, OUT): head_cut for n in (self.classifier, *aux)}

    def totals(self) -> tuple[int, int]:
        """Conv+linear MACs per sample and total parameters of the unpruned network."""
        costed = self.costed.values()
        macs = sum(c.macs(c.out_channels, c.in_channels) for c in costed)
        params = sum(c.params(c.out_channels, c.in_channels) for c in costed)
        return macs, params + self.other_params

    def cost(self, removed: dict[tuple[str, str], int]) -> tuple[int, int]:
        """MACs per sample and parameters after removing units.

        Args:
            removed: Units removed per ``(layer name, "out"|"in")``.
        """
        macs = params = 0
        for name, c in self.costed.items():
            out = c.out_channels - removed.get((name, OUT), 0)
            inp = c.in_channels - removed.get((name, IN), 0)
            if c.depthwise:
                inp = out
            macs += c.macs(out, inp)
            params += c.params(out, inp)
        return macs, params + self.other_params


def prunable_layers(model: nn.Module, granularity: str = "filter") -> dict[str, nn.Module]:
    """The layers a criterion should score for ``granularity``.

    ``filter`` and ``kernel``: every Conv2d. ``weight``: every Conv2d and Linear except the
    classifier (its rows are the classes; a class-subset head cuts them instead). Layers inside
    auxiliary heads are left out: they run only in training and pruning keeps them.
    """
    classifier, _ = find_classifier(model)
    heads = tuple(f"{h}." for h in aux_heads(model))
    types = (nn.Conv2d, nn.Linear) if granularity == "weight" else (nn.Conv2d,)
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, types) and n != classifier and not (heads and n.startswith(heads))
    }


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


def _analyse(model: nn.Module, example_input: Tensor) -> Structure:
    check_prunable(model)
    graph = trace(model, example_input)
    inference = layer_shapes(model, example_input)
    extra = extra_layers(model, example_input, graph, inference)
    layers = {**inference, **extra}
    conv_order = sorted(
        (n for n, c in inference.items() if c.kind == "conv"), key=lambda n: inference[n].order
    )
    classifier_name, classifier = find_classifier(model)
    aux_names = [n for n in aux_classifiers(model) if n in layers]
    covered = covered_params(model, layers)
    other = sum(p.numel() for p in model.parameters() if id(p) not in covered)
    ignored = [classifier, *(model.get_submodule(n) for n in aux_names)]
    groups, kept = _channel_groups(model, graph, layers, ignored, aux_heads(model))
    groups.sort(key=lambda g: layers[g.key].order)
    return Structure(
        input_shape=tuple(example_input.shape[1:]),
        conv_order=conv_order,
        layers=inference,
        other_params=other,
        groups=groups,
        classifier=classifier_name,
        names=[n for n, _ in model.named_modules() if n],
        aux_classifiers=aux_names,
        kept=kept,
        extra=extra,
    )


def _channel_groups(
    model: nn.Module,
    graph: tp.DependencyGraph,
    layers: dict[str, LayerCost],
    ignored: list[nn.Module],
    heads: list[str],
) -> tuple[list[ChannelGroup], dict[str, str]]:
    """Every dependency group rooted at a conv: the prunable ones, and the kept ones' reasons."""
    groups: list[ChannelGroup] = []
    kept: dict[str, str] = {}
    names = graph._module2name
    with static_index_maps():
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
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
            reason = blocked_reason(graph, full)
            if reason is None and any(key == h or key.startswith(h + ".") for h in heads):
                reason = "it lies inside an auxiliary head"
            built = None if reason else _to_group(graph, full, key, module.out_channels, layers)
            if built is None:
                kept[key] = reason or "grouped convs tie its channels into units of unequal size"
            else:
                groups.append(built)
    return groups, kept


def _to_group(
    graph: tp.DependencyGraph,
    group: tp.Group,
    key: str,
    channels: int,
    layers: dict[str, LayerCost],
) -> ChannelGroup | None:
    """Plain data for one torch-pruning group; ``None`` if grouped convs tie it unevenly."""
    names = graph._module2name
    out = ChannelGroup(key=key, channels=channels, convs=[], members=[])
    ties: list[tuple[int, Tensor, Tensor]] = []
    for it in group.items:
        module = it.dep.target.module
        if isinstance(module, nn.Parameter):
            name = graph._param_to_name.get(module)
        elif isinstance(module, nn.Module) and module in names:
            name = names[module]
        else:
            continue  # functional nodes (add, mul, cat, flatten) own no parameters
        is_out = graph.is_out_channel_pruning_fn(it.dep.handler)
        idxs = torch.as_tensor(list(it.idxs), dtype=torch.long)
        roots = torch.as_tensor(list(it.root_idxs), dtype=torch.long)
        if isinstance(module, nn.Module) and is_out:
            out.members.append(name)
            if isinstance(module, nn.Conv2d):
                out.convs.append((name, idxs, roots))
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            out.renormalised.append(name)
        if grouped_conv(module):
            width = (module.out_channels if is_out else module.in_channels) // module.groups
            ties.append((width, idxs, roots))
        if name in layers:
            mult = torch.bincount(roots, minlength=channels)
            uniform = bool((mult == mult[0]).all())
            # norms and parameters have one width: whatever the handler, they lose channels
            dim = OUT if is_out or layers[name].kind in ("bn", "norm", "param") else IN
            out.items.append((name, dim, int(mult[0]) if uniform else mult))
    if ties:
        out.units = _tied_units(channels, ties)
        if out.units is None:
            return None
        if out.units.shape[1] == 1:
            out.units = None
    return out


def _tied_units(channels: int, ties: list[tuple[int, Tensor, Tensor]]) -> Tensor | None:
    """Key channels that grouped convs tie together, as ``[units, size]``; ``None`` if uneven.

    A grouped conv with ``width`` channels per group can only lose the same local channels in
    every group (what keeps it a valid grouped conv with the same groups), so key channels
    reaching the same local index ``idx % width`` are removed together.
    """
    parent = list(range(channels))

    def find(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for width, idxs, roots in ties:
        local = idxs % width
        first: dict[int, int] = {}
        for lo, root in zip(local.tolist(), roots.tolist()):
            anchor = first.setdefault(lo, root)
            ra, rb = find(anchor), find(root)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    classes: dict[int, list[int]] = {}
    for c in range(channels):
        classes.setdefault(find(c), []).append(c)
    sizes = {len(v) for v in classes.values()}
    if len(sizes) != 1:
        return None
    return torch.tensor(sorted(classes.values()), dtype=torch.long)
