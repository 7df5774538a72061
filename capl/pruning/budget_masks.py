"""Mask budgets: rank single weights or whole kernels, layer by layer or globally."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from typing_extensions import override

from capl.errors import ConfigError
from capl.pruning.budget import (
    Problem,
    check_layer_ratios,
    check_score_names,
    checked_scores,
    normalise,
    round_half_up,
    unit_ratios,
)
from capl.pruning.config import PruningConfig
from capl.pruning.plan_format import PruningPlan, pack_mask
from capl.pruning.structure import Structure, prunable_layers


class MaskProblem(Problem):
    """Weight / kernel masks: rank single weights or whole k x k kernels.

    Millions of units: no full sort unless a global target search needs one; the removed set of
    a layer is its ``n`` lowest scores (ties broken by position), found with ``kthvalue``.

    Args:
        structure: The network's traced structure.
        model: The network (weight shapes).
        scores: Criterion scores per layer, in the weight's (weight) or its first two dims'
            (kernel) shape.
        granularity: ``"weight"`` or ``"kernel"``.
        normalization: Per-layer score normalisation (``none``, ``l2``, ``max``, ``sum``).
        config: Budget and constraints.
        excluded: Module names left unmasked (ignored or skipped).
        head_cut: Classifier rows a class-subset head removes.
    """

    def __init__(
        self,
        structure: Structure,
        model: nn.Module,
        scores: dict[str, Tensor],
        granularity: str,
        normalization: str,
        config: PruningConfig,
        excluded: set[str],
        head_cut: int,
    ) -> None:
        self.config = config
        self.granularity = granularity
        self.macs0, self.params0 = structure.totals()
        head_macs, head_params = structure.cost(structure.head_removed(head_cut))
        self.head_macs = self.macs0 - head_macs
        self.head_params = self.params0 - head_params
        check_score_names(scores, structure)
        check_layer_ratios(config, list(prunable_layers(model, granularity)))
        self._collect(structure, model, scores, excluded, normalization)
        self.units = [s.numel() for s in self.flat]
        self.ratios = unit_ratios(config, self.names)
        self._memo: dict[int, list[int]] = {}
        self.sorted_lid: Tensor | None = None
        if config.scope == "global" and self.names and config.target is not None:
            lid = torch.cat(
                [torch.full((u,), i, dtype=torch.int32) for i, u in enumerate(self.units)]
            )
            self.sorted_lid = lid[_ordered(torch.cat(self.flat))]
        if config.ratio > 0 and not self.names:
            raise ConfigError(
                "no prunable layer left (all ignored, skipped or unscored): relax ignore / "
                "skip_first or score the network's layers"
            )

    def _collect(
        self,
        structure: Structure,
        model: nn.Module,
        scores: dict[str, Tensor],
        excluded: set[str],
        normalization: str,
    ) -> None:
        """Set the masked layers in forward order, with their flat scores and unit costs."""
        granularity = self.granularity
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.flat: list[Tensor] = []
        self.unit_macs: list[int] = []
        self.unit_params: list[int] = []
        for name in sorted(scores, key=lambda n: structure.layers[n].order
                           if n in structure.layers else 1 << 30):  # fmt: skip
            layer = structure.layers.get(name)
            if layer is None or layer.kind == "bn" or name == structure.classifier:
                continue
            if name in excluded or (granularity == "kernel" and layer.kind != "conv"):
                continue
            weight = model.get_submodule(name).weight
            shape = tuple(weight.shape[:2]) if granularity == "kernel" else tuple(weight.shape)
            s = normalise(checked_scores(name, scores[name], shape).flatten(), normalization)
            per_unit = weight[0, 0].numel() if granularity == "kernel" else 1
            self.names.append(name)
            self.shapes.append(shape)
            self.flat.append(s.float())
            self.unit_params.append(per_unit)
            self.unit_macs.append(per_unit * layer.positions)

    def _raw(self, r: float) -> list[int]:
        if self.config.scope == "layer":
            ratios = self.ratios or [r] * len(self.units)
            return [round_half_up(q * u) for q, u in zip(ratios, self.units)]
        m = round_half_up(r * sum(self.units))
        if m not in self._memo:
            if self.sorted_lid is not None:
                counts = torch.bincount(self.sorted_lid[:m], minlength=len(self.names))
            else:
                lowest = _lowest(torch.cat(self.flat), m)
                counts = torch.stack([part.sum() for part in lowest.split(self.units)])
            self._memo[m] = [int(c) for c in counts]
        return self._memo[m]

    @override
    def counts(self, r: float) -> list[int] | None:
        out = []
        for units, n in zip(self.units, self._raw(r)):
            kept = min(max(units - n, self.config.min_channels), units)
            if kept <= 0:
                return None
            out.append(units - kept)
        return out

    @override
    def emptied(self, r: float) -> str:
        for name, units, n in zip(self.names, self.units, self._raw(r)):
            if n >= units:
                return name
        return "a layer"

    @override
    def reduction(self, counts: list[int]) -> dict[str, float]:
        total_units = sum(self.units)
        macs = sum(n * c for n, c in zip(counts, self.unit_macs)) + self.head_macs
        params = sum(n * c for n, c in zip(counts, self.unit_params)) + self.head_params
        return {
            "units": sum(counts) / total_units if total_units else 0.0,
            "macs": macs / self.macs0,
            "params": params / self.params0,
        }

    @override
    def fill(self, plan: PruningPlan, counts: list[int]) -> None:
        # a layer's share of the global lowest m is its own lowest n (same tie order), and a
        # clamped layer keeps its top units, so per-layer selection reproduces both scopes
        for name, shape, s, n in zip(self.names, self.shapes, self.flat, counts):
            plan.masks[name] = {"shape": list(shape), "keep": pack_mask(~_lowest(s, n))}


def _lowest(s: Tensor, n: int) -> Tensor:
    """Bool mask of the ``n`` lowest entries of 1-D ``s``; ties go to the lower position."""
    mask = torch.zeros(s.numel(), dtype=torch.bool)
    if n <= 0:
        return mask
    if n >= s.numel():
        return ~mask
    v = torch.kthvalue(s, n).values
    mask = s < v
    missing = n - int(mask.sum())
    mask[(s == v).nonzero().flatten()[:missing]] = True
    return mask


def _ordered(s: Tensor) -> Tensor:
    """Ascending order of float32 ``s`` with ties by position, via unique int64 sort keys.

    Sorting ``(order-preserving int of the float bits, position)`` is a deterministic stable
    sort at half the cost of ``torch.sort(stable=True)`` on millions of scores.
    """
    bits = s.contiguous().view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    keys = (ordered << 32) | torch.arange(s.numel(), dtype=torch.long)
    return torch.sort(keys).indices
