"""Structured budgets: rank the output channels of dependency groups and cost their removal."""

from __future__ import annotations

import math

import torch
from torch import Tensor
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
from capl.pruning.latency_table import LatencyTable, kept_widths
from capl.pruning.plan_format import PruningPlan
from capl.pruning.structure import ChannelGroup, Structure

_Costs = list[tuple[tuple[str, str], int | Tensor]]


class FilterProblem(Problem):
    """Structured pruning: rank the channels of dependency groups.

    Args:
        structure: The network's traced structure.
        scores: Criterion scores per layer (only conv output channels are used).
        normalization: Per-layer score normalisation (``none``, ``l2``, ``max``, ``sum``).
        config: Budget and constraints.
        excluded: Module names whose groups are kept whole (ignored or skipped).
        head_cut: Classifier rows a class-subset head removes.
        round_to: Resolved channel multiple (``round_to: auto`` depends on the device).
        latency: The network's latency table, to predict the latency a removal saves.
    """

    def __init__(
        self,
        structure: Structure,
        scores: dict[str, Tensor],
        normalization: str,
        config: PruningConfig,
        excluded: set[str],
        head_cut: int,
        round_to: int | None = None,
        latency: LatencyTable | None = None,
    ) -> None:
        self.structure = structure
        self.config = config
        self.round_to = round_to
        self.latency = latency
        self.latency_base = 0.0 if latency is None else latency.predict(kept_widths(structure, {}))
        self.head = structure.head_removed(head_cut)
        self.macs0, self.params0 = structure.totals()
        check_score_names(scores, structure)
        normalised = _normalised_convs(structure, scores, normalization)
        check_layer_ratios(
            config,
            [g.key for g in structure.groups],
            {g.key: [n for n, _, _ in g.convs] for g in structure.groups},
        )
        group_scores = self._rank_groups(normalised, excluded)
        # filters a group channel stands for: one per conv whose output it removes
        self.filters = torch.tensor([len(g.convs) for g in self.groups], dtype=torch.float64)
        self.ratios = unit_ratios(config, [g.key for g in self.groups])
        self.total_filters = float(sum(g.channels * len(g.convs) for g in self.groups))
        if config.scope == "global" and self.groups:
            self._rank_globally(group_scores)
        if config.ratio > 0 and not self.groups:
            raise ConfigError(
                "no prunable channel group left (all ignored, skipped or unscored): relax "
                "ignore / skip_first or score the network's convs"
            )

    def _rank_groups(self, normalised: dict[str, Tensor], excluded: set[str]) -> list[Tensor]:
        """Set ``groups``, ``orders`` and ``costs`` of the scored groups; their unit scores."""
        self.groups: list[ChannelGroup] = []
        self.orders: list[Tensor] = []
        self.costs: list[_Costs] = []
        group_scores: list[Tensor] = []
        for group in self.structure.groups:
            if any(m in excluded for m in group.members):
                continue
            score = _group_score(group, normalised)
            if score is None:
                continue
            # removal units: single channels, or the channels a grouped conv ties together
            if group.units is not None:
                score = score[group.units].mean(1)
            order = torch.sort(score, stable=True).indices
            self.groups.append(group)
            self.orders.append(order)
            group_scores.append(score)
            self.costs.append(_cumulative_costs(group, order))
        return group_scores

    def _rank_globally(self, group_scores: list[Tensor]) -> None:
        """One ranking of every unit of every group (global scope).

        Equal scores across groups (untrained BatchNorm scales, APoZ's counts) are ordered by
        the unit's place in its own group's ranking, as a fraction of the group: a tie then
        cuts every group by the same fraction, as the layer scope does, instead of emptying
        the first groups in forward order.
        """
        flat = torch.cat(group_scores)
        gid = torch.cat(
            [torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(group_scores)]
        )
        place = torch.cat([_place_in_group(order) for order in self.orders])
        by_place = torch.sort(place, stable=True).indices
        sorted_gid = gid[by_place[torch.sort(flat[by_place], stable=True).indices]]
        self.sorted_gid = sorted_gid
        units = torch.tensor([g.unit for g in self.groups], dtype=torch.float64)
        self.cum_filters = (self.filters * units)[sorted_gid].cumsum(0)

    def _raw(self, r: float) -> list[int]:
        if self.config.scope == "layer":
            ratios = self.ratios or [r] * len(self.groups)
            return [
                round_half_up(q * g.channels / g.unit) * g.unit for q, g in zip(ratios, self.groups)
            ]
        # smallest prefix of the global ranking that removes a fraction r of the filters
        m = int(torch.searchsorted(self.cum_filters, r * self.total_filters - 1e-9)) + 1
        m = 0 if r <= 0 else min(m, len(self.sorted_gid))
        units = torch.bincount(self.sorted_gid[:m], minlength=len(self.groups)).tolist()
        return [n * g.unit for n, g in zip(units, self.groups)]

    @override
    def counts(self, r: float) -> list[int] | None:
        round_to, floor = self.round_to, self.config.min_channels
        out = []
        for g, n in zip(self.groups, self._raw(r)):
            step = math.lcm(round_to or 1, g.unit)  # kept channels fill whole removal units
            step = step if step > 1 else None
            kept = g.channels - n
            if step and kept < g.channels:
                kept = max(step, round_half_up(kept / step) * step)
            kept = max(kept, floor)
            if step and kept < g.channels and kept % step:
                kept = math.ceil(kept / step) * step
            kept = min(kept, g.channels)
            if kept <= 0:
                return None
            out.append(g.channels - kept)
        return out

    @override
    def emptied(self, r: float) -> str:
        for g, n in zip(self.groups, self._raw(r)):
            if n >= g.channels:
                return f"the channel group of {g.key}"
        return "a layer"

    @override
    def reduction(self, counts: list[int]) -> dict[str, float]:
        removed: dict[tuple[str, str], int] = dict(self.head)
        for n, items, group in zip(counts, self.costs, self.groups):
            if n == 0:
                continue
            units = n // group.unit
            for key, mult in items:
                step = int(mult[units]) if isinstance(mult, Tensor) else mult * n
                removed[key] = removed.get(key, 0) + step
        macs, params = self.structure.cost(removed)
        filters = float((self.filters * torch.tensor(counts, dtype=torch.float64)).sum())
        out = {
            "units": filters / self.total_filters if self.total_filters else 0.0,
            "macs": 1 - macs / self.macs0,
            "params": 1 - params / self.params0,
        }
        if self.latency is not None:
            predicted = self.latency.predict(kept_widths(self.structure, removed))
            out["latency"] = 1 - predicted / self.latency_base
        return out

    @override
    def fill(self, plan: PruningPlan, counts: list[int]) -> None:
        for g, order, n in zip(self.groups, self.orders, counts):
            if n:
                chosen = order[: n // g.unit]
                channels = chosen if g.units is None else g.units[chosen].flatten()
                plan.removed.append((g.key, sorted(channels.tolist())))


def _normalised_convs(
    structure: Structure, scores: dict[str, Tensor], normalization: str
) -> dict[str, Tensor]:
    """The checked, normalised scores of conv layers (only their output channels are units)."""
    normalised: dict[str, Tensor] = {}
    for name, score in scores.items():
        layer = structure.layers.get(name)
        if layer is None or layer.kind != "conv":
            continue
        s = checked_scores(name, score, (layer.out_channels,))
        normalised[name] = normalise(s, normalization)
    return normalised


def _place_in_group(order: Tensor) -> Tensor:
    """Each unit's place in its group's ranking as a fraction in (0, 1), in unit order."""
    n = len(order)
    place = torch.empty(n, dtype=torch.float64)
    place[order] = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return place


def _cumulative_costs(group: ChannelGroup, order: Tensor) -> _Costs:
    """Per (layer, dim) of ``group``: a fixed cost per channel, or cumulative in ``order``."""
    items: _Costs = []
    for layer, dim, mult in group.items:
        if isinstance(mult, Tensor):
            per_unit = mult if group.units is None else mult[group.units].sum(1)
            cum = torch.cat([mult.new_zeros(1), per_unit[order].cumsum(0)])
            items.append(((layer, dim), cum))
        else:
            items.append(((layer, dim), mult))
    return items


def _group_score(group: ChannelGroup, scores: dict[str, Tensor]) -> Tensor | None:
    """Mean over the group's scored convs of their (normalised) scores, per key channel."""
    total = torch.zeros(group.channels, dtype=torch.float64)
    count = torch.zeros(group.channels, dtype=torch.float64)
    for name, idxs, roots in group.convs:
        if name in scores:
            total.index_add_(0, roots, scores[name][idxs])
            count.index_add_(0, roots, torch.ones(len(roots), dtype=torch.float64))
    if not bool((count > 0).any()):
        return None
    return torch.where(count > 0, total / count.clamp_min(1), torch.inf)
