"""Realised pruning report: what a pruning actually removed, counted on the real networks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from capl.benchmark.counting import count_nonzero_params, count_params
from capl.pruning.structure import LayerCost, layer_shapes

# The whole-network totals are the benchmark's own counts (effective masked weights, each
# shared parameter once); kept under the pruning name for the public API.
nonzero_parameters = count_nonzero_params


def conv_linear_macs(
    model: nn.Module, example_input: Tensor, positions: dict[str, LayerCost] | None = None
) -> dict[str, dict[str, int]]:
    """Per Conv2d / Linear layer (forward order): channels, nonzero weights and MACs per sample.

    MACs are multiply-adds of conv and linear layers only (as torchvision reports them);
    ``nonzero_macs`` counts only multiplications by nonzero weights (what masks save).

    Args:
        model: The network.
        example_input: A batch of its input shape (one forward finds each layer's output size).
        positions: Shape facts of the same network *before* channel pruning (e.g. the planner's
            traced :class:`~capl.pruning.structure.Structure` ``layers``); removing channels
            leaves output sizes and forward order unchanged, so with this no forward runs and
            the channel counts are read from the modules themselves.
    """
    shapes = layer_shapes(model, example_input) if positions is None else _current(model, positions)
    out: dict[str, dict[str, int]] = {}
    for name, c in sorted(shapes.items(), key=lambda kv: kv[1].order):
        if c.kind == "bn":
            continue
        # with a pruning mask, ``weight`` is the masked product the layer computes with
        nonzero = int(model.get_submodule(name).weight.count_nonzero())
        out[name] = {
            "channels": c.out_channels,
            "in_channels": c.in_channels,
            "weights": nonzero,
            "macs": c.macs(c.out_channels, c.in_channels),
            "nonzero_macs": c.positions * nonzero,
        }
    return out


def _current(model: nn.Module, positions: dict[str, LayerCost]) -> dict[str, LayerCost]:
    """``positions`` with each Conv2d / Linear's channels and groups as the modules now have."""
    out: dict[str, LayerCost] = {}
    for name, c in positions.items():
        if c.kind not in ("conv", "linear"):
            continue
        m = model.get_submodule(name)
        if isinstance(m, nn.Conv2d):
            out[name] = replace(
                c, out_channels=m.out_channels, in_channels=m.in_channels, groups=m.groups
            )
        elif isinstance(m, nn.Linear):
            out[name] = replace(c, out_channels=m.out_features, in_channels=m.in_features)
    return out


def _fraction(before: int, after: int) -> float:
    return 0.0 if before == 0 else (before - after) / before


def pruning_report(
    before_model: nn.Module,
    after_model: nn.Module,
    example_input: Tensor,
    positions: dict[str, LayerCost] | None = None,
) -> dict[str, Any]:
    """Compare a network before and after pruning, from real counts.

    Args:
        before_model: The unpruned network.
        after_model: The pruned one (physically smaller and/or masked, head possibly cut).
        example_input: A batch of the network's input shape (the first sample is used).
        positions: The unpruned network's shape facts (see :func:`conv_linear_macs`): saves
            the two forwards that would find them.

    Returns:
        ``layers``: per Conv2d/Linear name ``channels_before/after`` (output channels),
        ``weights_before/after`` (nonzero weights), ``macs_before/after``; and totals
        ``channels_*`` (summed over Conv2d outputs), ``params_*`` (dense), ``nonzero_params_*``,
        ``weights_*`` (nonzero conv/linear weights), ``macs_*`` (dense conv+linear MACs per
        sample) and ``nonzero_macs_*``, each as ``_before``, ``_after``, ``_removed_fraction``.
    """
    x = example_input[:1]
    before = conv_linear_macs(before_model, x, positions)
    after = conv_linear_macs(after_model, x, positions)
    layers: dict[str, dict[str, int]] = {}
    for name, b in before.items():
        a = after.get(name, {"channels": 0, "weights": 0, "macs": 0, "nonzero_macs": 0})
        layers[name] = {
            "channels_before": b["channels"],
            "channels_after": a["channels"],
            "weights_before": b["weights"],
            "weights_after": a["weights"],
            "macs_before": b["macs"],
            "macs_after": a["macs"],
        }
    convs = [n for n, m in before_model.named_modules() if isinstance(m, nn.Conv2d)]
    totals = {
        "channels": (
            sum(before[n]["channels"] for n in convs if n in before),
            sum(after[n]["channels"] for n in convs if n in after),
        ),
        "params": (count_params(before_model), count_params(after_model)),
        "nonzero_params": (count_nonzero_params(before_model), count_nonzero_params(after_model)),
        "weights": (
            sum(v["weights"] for v in before.values()),
            sum(v["weights"] for v in after.values()),
        ),
        "macs": (sum(v["macs"] for v in before.values()), sum(v["macs"] for v in after.values())),
        "nonzero_macs": (
            sum(v["nonzero_macs"] for v in before.values()),
            sum(v["nonzero_macs"] for v in after.values()),
        ),
    }
    report: dict[str, Any] = {"layers": layers}
    for key, (b, a) in totals.items():
        report[f"{key}_before"] = b
        report[f"{key}_after"] = a
        report[f"{key}_removed_fraction"] = _fraction(b, a)
    return report
