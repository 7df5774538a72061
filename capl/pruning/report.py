"""Realised pruning report: what a pruning actually removed, counted on the real networks."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from capl.benchmark.counting import count_nonzero_params, count_params
from capl.pruning.structure import layer_shapes

# The whole-network totals are the benchmark's own counts (effective masked weights, each
# shared parameter once); kept under the pruning name for the public API.
nonzero_parameters = count_nonzero_params


def conv_linear_macs(model: nn.Module, example_input: Tensor) -> dict[str, dict[str, int]]:
    """Per Conv2d / Linear layer (forward order): channels, nonzero weights and MACs per sample.

    MACs are multiply-adds of conv and linear layers only (as torchvision reports them);
    ``nonzero_macs`` counts only multiplications by nonzero weights (what masks save).
    """
    shapes = layer_shapes(model, example_input)
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


def _fraction(before: int, after: int) -> float:
    return 0.0 if before == 0 else (before - after) / before


def pruning_report(
    before_model: nn.Module, after_model: nn.Module, example_input: Tensor
) -> dict[str, Any]:
    """Compare a network before and after pruning, from real counts.

    Args:
        before_model: The unpruned network.
        after_model: The pruned one (physically smaller and/or masked, head possibly cut).
        example_input: A batch of the network's input shape (the first sample is used).

    Returns:
        ``layers``: per Conv2d/Linear name ``channels_before/after`` (output channels),
        ``weights_before/after`` (nonzero weights), ``macs_before/after``; and totals
        ``channels_*`` (summed over Conv2d outputs), ``params_*`` (dense), ``nonzero_params_*``,
        ``weights_*`` (nonzero conv/linear weights), ``macs_*`` (dense conv+linear MACs per
        sample) and ``nonzero_macs_*``, each as ``_before``, ``_after``, ``_removed_fraction``.
    """
    x = example_input[:1]
    before = conv_linear_macs(before_model, x)
    after = conv_linear_macs(after_model, x)
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
