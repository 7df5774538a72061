"""Scores -> plan under a budget; plan -> physical removal or masks.

A :class:`PruningPlan` is plain data: which output channels of which groups to remove (structured
granularity) or which weights / kernels to zero (mask granularities), plus what it was made from
and what it realised. Plans are JSON files, so a pruned network can be rebuilt from its
architecture, its plan and its weights.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.utils import prune
from torch_pruning import _helpers as tp_helpers

from capl.benchmark import masked_tensors
from capl.errors import ConfigError
from capl.models import aux_heads, cut_head, find_classifier, head_outputs
from capl.pruning._threads import single_threaded
from capl.pruning.config import PruningConfig
from capl.pruning.latency_table import LatencyTable, kept_widths
from capl.pruning.report import pruning_report
from capl.pruning.structure import ChannelGroup, Structure, analyse
from capl.pruning.tracing import blocked_reason, out_channel_fn, static_index_maps, trace
from capl.strategies.base import Criterion, model_device

log = logging.getLogger(__name__)

PLAN_VERSION = 1
_SEARCH_STEPS = 48
_TARGET_TOLERANCE = 0.01


@dataclass
class PruningPlan:
    """A replayable pruning decision.

    Attributes:
        network: Architecture name (as given to :func:`make_plan`).
        fingerprint: Hash of the unpruned network's state_dict names and shapes; a plan only
            applies to a network with the same fingerprint.
        input_shape: Per-sample input shape ``[C, H, W]`` used to trace the network.
        granularity: ``"filter"`` (structured), ``"kernel"`` or ``"weight"`` (masks).
        criterion: The criterion's :meth:`~capl.strategies.base.Criterion.settings`.
        config: The :class:`PruningConfig` used.
        removed: Structured: ``[key conv name, removed output-channel indices]`` per group, in
            application order; the indices number the key conv's channels as they are when that
            group is applied (groups never share output channels, so these are the original ones).
        masks: Masks: per layer ``{"shape": unit shape, "keep": base64 of the bit-packed keep
            mask}``; the unit shape is the weight's shape (weight) or its first two dims (kernel).
        head_rows: Classifier rows kept after pruning (class-subset head), or ``None``.
        report: Realised counts from :func:`~capl.pruning.report.pruning_report` plus
            ``selection`` (the ratio the search settled on and the requested budget).
        version: Plan format version.
    """

    network: str
    fingerprint: str
    input_shape: list[int]
    granularity: str
    criterion: dict[str, Any]
    config: PruningConfig
    removed: list[tuple[str, list[int]]] = field(default_factory=list)
    masks: dict[str, dict[str, Any]] = field(default_factory=dict)
    head_rows: list[int] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``json.dumps`` works on it)."""
        return {
            "version": self.version,
            "network": self.network,
            "fingerprint": self.fingerprint,
            "input_shape": list(self.input_shape),
            "granularity": self.granularity,
            "criterion": _jsonable(self.criterion),
            "config": self.config.to_dict(),
            "removed": [[key, list(idxs)] for key, idxs in self.removed],
            "masks": {k: dict(v) for k, v in self.masks.items()},
            "head_rows": None if self.head_rows is None else list(self.head_rows),
            "report": _jsonable(self.report),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        """Rebuild from :meth:`to_dict` output (e.g. after a JSON round trip)."""
        version = data.get("version")
        if version != PLAN_VERSION:
            raise ConfigError(
                f"pruning plan version {version!r} is not supported: re-create the plan with "
                f"this capl (plan version {PLAN_VERSION})"
            )
        try:
            return cls(
                network=data["network"],
                fingerprint=data["fingerprint"],
                input_shape=list(data["input_shape"]),
                granularity=data["granularity"],
                criterion=dict(data["criterion"]),
                config=PruningConfig.from_dict(data["config"]),
                removed=[(str(k), [int(i) for i in v]) for k, v in data.get("removed", [])],
                masks={k: dict(v) for k, v in data.get("masks", {}).items()},
                head_rows=None if data.get("head_rows") is None else list(data["head_rows"]),
                report=dict(data.get("report", {})),
            )
        except KeyError as err:
            raise ConfigError(
                f"pruning plan lacks the field {err.args[0]!r}: pass a file written by "
                "PruningPlan.to_dict"
            ) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def fingerprint(model: nn.Module) -> str:
    """Short hash of a network's state_dict names and shapes (its architecture)."""
    text = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


# --------------------------------------------------------------------------------------------
# planning


@single_threaded
def make_plan(
    model: nn.Module,
    criterion: Criterion,
    scores: dict[str, Tensor],
    config: PruningConfig,
    example_input: Tensor,
    head_rows: Sequence[int] | None = None,
    network: str | None = None,
    latency: LatencyTable | None = None,
) -> PruningPlan:
    """Decide what to remove.

    The network's structure (dependency groups, costs) is traced once per model and cached, and
    scores are only ranked here, so calling this for many ratios with the same scores is cheap;
    most of the time goes into the realised report (one pruned copy, counted for real).

    Args:
        model: The network to prune (left unchanged).
        criterion: The criterion that produced ``scores`` (granularity, normalisation, settings).
        scores: ``criterion.score(...)`` output, per layer name; higher = more important.
        config: Budget and constraints.
        example_input: A batch of the network's input shape (tracing uses the first sample).
        head_rows: Classifier rows to keep after pruning (class-subset head), or ``None``.
        network: Architecture name recorded in the plan (default: the model's class name).
        latency: The network's measured :class:`~capl.pruning.latency_table.LatencyTable`
            (needed by ``target: latency``); with it, structured plans record their predicted
            latency in ``report.selection``.

    Returns:
        The plan, with its realised report.

    Raises:
        ConfigError: Unknown ignore or layer_ratios pattern, invalid head rows, scores that do
            not fit the model, a budget that would remove every channel / weight of a layer, or
            an unreachable target.
    """
    structure = analyse(model, example_input)
    classifier = model.get_submodule(structure.classifier)
    rows = _check_head_rows(head_rows, head_outputs(classifier))
    excluded = _excluded(structure, config)
    head_cut = 0 if rows is None else head_outputs(classifier) - len(rows)
    param = next(model.parameters(), None)
    round_to = config.resolved_round_to(
        model_device(model), torch.float32 if param is None else param.dtype
    )
    if config.target == "latency" and latency is None:
        raise ConfigError(
            "target latency needs the network's latency table: give PruningCallback a latency "
            "spec (backend, batch_size, threads, cache) or pass make_plan(latency=...)"
        )
    if criterion.granularity == "filter":
        problem: _Problem = _FilterProblem(
            structure, scores, criterion.normalization, config, excluded, head_cut, round_to,
            latency,
        )  # fmt: skip
    elif criterion.granularity in ("weight", "kernel"):
        if config.target == "latency":
            raise ConfigError(
                f"target latency needs physically removed channels, but {type(criterion).__name__}"
                f" masks {criterion.granularity}s: use a filter criterion or target macs / params"
            )
        round_to = None
        if isinstance(config.round_to, int):  # an explicit multiple, not the default auto
            log.warning(
                "round_to=%s ignored: masks (%s granularity) keep no channel counts",
                config.round_to,
                criterion.granularity,
            )
        problem = _MaskProblem(
            structure, model, scores, criterion.granularity, criterion.normalization, config,
            excluded, head_cut,
        )  # fmt: skip
    else:
        raise ConfigError(
            f"criterion {type(criterion).__name__} has unknown granularity "
            f"{criterion.granularity!r}: use filter, kernel or weight"
        )
    ratio = _choose_ratio(problem, config)
    counts = problem.counts(ratio)
    if counts is None:
        which = " (or its layer_ratios entry)" if config.layer_ratios else ""
        raise ConfigError(
            f"pruning ratio {config.ratio}{which} would remove every unit of "
            f"{problem.emptied(ratio)}: lower the ratio or set min_channels >= 1"
        )
    plan = PruningPlan(
        network=network or type(model).__name__,
        fingerprint=fingerprint(model),
        input_shape=list(structure.input_shape),
        granularity=criterion.granularity,
        criterion=criterion.settings(),
        config=copy.deepcopy(config),
        head_rows=rows,
    )
    problem.fill(plan, counts)
    estimate = problem.reduction(counts)
    pruned = copy.deepcopy(model)
    apply_plan(pruned, plan, example_input[:1])
    plan.report = pruning_report(model, pruned, example_input[:1], structure.layers)
    plan.report["selection"] = {
        "requested_ratio": config.ratio,
        "target": config.target,
        "scope": config.scope,
        "unit_ratio": ratio,
        "round_to": round_to,
        "estimated_macs_removed_fraction": estimate["macs"],
        "estimated_params_removed_fraction": estimate["params"],
        **_predicted_latency(problem, estimate),
        "renormalised": _renormalised(structure, plan),
    }
    log.info(
        "pruning plan %s/%s ratio %.3f: removed %.1f%% channels, %.1f%% params, %.1f%% MACs "
        "(nonzero weights %.1f%%)",
        plan.criterion.get("name"), config.scope, config.ratio,
        100 * plan.report["channels_removed_fraction"],
        100 * plan.report["params_removed_fraction"],
        100 * plan.report["macs_removed_fraction"],
        100 * plan.report["weights_removed_fraction"],
    )  # fmt: skip
    return plan


def _renormalised(structure: Structure, plan: PruningPlan) -> list[str]:
    """LayerNorms / GroupNorms whose channels the plan removes (logged: not a zeroing)."""
    keys = {key for key, _ in plan.removed}
    names = sorted({n for g in structure.groups if g.key in keys for n in g.renormalised})
    if names:
        log.warning(
            "pruning removes channels that %d normalisation layers (%s, ...) normalise over: "
            "their statistics now come from the kept channels only, so the pruned network is "
            "not the original with those channels zeroed; retrain or fine-tune after pruning",
            len(names), names[0],
        )  # fmt: skip
    return names


def _predicted_latency(problem: _Problem, estimate: dict[str, float]) -> dict[str, Any]:
    """``report.selection`` entries of a plan made with a latency table (else none)."""
    table = getattr(problem, "latency", None)
    if table is None or "latency" not in estimate:
        return {}
    base = problem.latency_base  # type: ignore[attr-defined]
    return {
        "estimated_latency_removed_fraction": estimate["latency"],
        "predicted_base_latency_ms": base,
        "predicted_latency_ms": base * (1 - estimate["latency"]),
        "latency_table": {k: table.settings[k] for k in ("backend", "batch_size", "threads")},
    }


def _check_head_rows(rows: Sequence[int] | None, outputs: int) -> list[int] | None:
    if rows is None:
        return None
    rows = [int(r) for r in rows]
    if not rows or len(set(rows)) != len(rows) or not all(0 <= r < outputs for r in rows):
        raise ConfigError(
            f"head rows {rows} are invalid for a classifier with {outputs} outputs: give "
            f"distinct indices in 0..{outputs - 1}"
        )
    return rows


def _excluded(structure: Structure, config: PruningConfig) -> set[str]:
    excluded: set[str] = set()
    for pattern in config.ignore:
        hits = fnmatch.filter(structure.names, pattern)
        if not hits:
            raise ConfigError(
                f"ignore pattern {pattern!r} matches no module of this network: fix the pattern "
                f"(module names look like {', '.join(structure.conv_order[:3])})"
            )
        excluded.update(hits)
    excluded.update(structure.conv_order[: config.skip_first])
    return excluded


def _check_layer_ratios(
    config: PruningConfig, keys: Sequence[str], members: dict[str, list[str]] | None = None
) -> None:
    """Every ``config.layer_ratios`` pattern must match one of ``keys``.

    Args:
        config: The pruning config.
        keys: Names the patterns match: all group key convs (filter) or prunable layers (masks),
            ignored ones included (ignore wins over a ratio).
        members: Per key the convs of its group, to point at the key when a pattern names only
            a non-key member.

    Raises:
        ConfigError: A pattern matches none of ``keys``.
    """
    for pattern in config.layer_ratios or {}:
        if any(fnmatch.fnmatch(k, pattern) for k in keys):
            continue
        hint = ""
        for key, names in (members or {}).items():
            hit = next((n for n in names if fnmatch.fnmatch(n, pattern)), None)
            if hit is not None:
                hint = f" ({hit} is pruned with the group keyed by {key}: use {key!r})"
                break
        raise ConfigError(
            f"layer_ratios pattern {pattern!r} matches no prunable layer of this network{hint}: "
            f"patterns match a channel group's first conv or a masked layer (e.g. "
            f"{', '.join(list(keys)[:3])})"
        )


def _unit_ratios(config: PruningConfig, keys: Sequence[str]) -> list[float] | None:
    """Layer-scope ratio per key from ``config.layer_ratios``; ``None`` without it."""
    return [config.ratio_for(k) for k in keys] if config.layer_ratios else None


def _normalise(score: Tensor, how: str) -> Tensor:
    if how == "none":
        return score
    if how == "l2":
        denom = score.norm()
    elif how == "max":
        denom = score.abs().max()
    elif how == "sum":
        denom = score.abs().sum()
    else:
        raise ConfigError(f"unknown score normalization {how!r}: use none, l2, max or sum")
    return score / denom if float(denom) > 0 else score


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


class _Problem:
    """A ranking of units and its cost model, evaluated for a unit ratio ``r``."""

    def counts(self, r: float) -> list[int] | None:
        """Units removed per group / layer at unit ratio ``r``; ``None`` if a layer empties."""
        raise NotImplementedError

    def emptied(self, r: float) -> str:
        """Name of a layer that ratio ``r`` would empty (for the error message)."""
        raise NotImplementedError

    def reduction(self, counts: list[int]) -> dict[str, float]:
        """Estimated removed fractions: ``units``, ``macs``, ``params``."""
        raise NotImplementedError

    def fill(self, plan: PruningPlan, counts: list[int]) -> None:
        """Write the removal for ``counts`` into ``plan``."""
        raise NotImplementedError


def _choose_ratio(problem: _Problem, config: PruningConfig) -> float:
    """The unit ratio to prune at: ``config.ratio`` itself, or searched to hit the target."""
    if config.target is None or config.ratio == 0.0:
        return config.ratio

    def value(r: float) -> float | None:
        counts = problem.counts(r)
        return None if counts is None else problem.reduction(counts)[config.target]

    goal = config.ratio
    lo, hi = 0.0, 1.0
    # the realised reduction is a non-decreasing step function of r: bisect for the step that
    # crosses the goal, then keep whichever side lands closer
    for _ in range(_SEARCH_STEPS):
        mid = (lo + hi) / 2
        v = value(mid)
        if v is None or v >= goal:
            hi = mid
        else:
            lo = mid
    candidates = [(r, v) for r in (lo, hi) if (v := value(r)) is not None]
    best_r, best_v = min(candidates, key=lambda rv: (abs(rv[1] - goal), rv[0]))
    if best_v < goal - _TARGET_TOLERANCE:
        # coarse steps (round_to, layer scope): the side that meets the budget beats the
        # closer side that misses it
        meeting = [(r, v) for r, v in candidates if v >= goal]
        if meeting:
            return meeting[0][0]
        raise ConfigError(
            f"{config.target} reduction {goal} is unreachable: at most {best_v:.3f} can be removed "
            f"with min_channels={config.min_channels} and the ignored layers; lower the ratio"
        )
    return best_r


class _FilterProblem(_Problem):
    """Structured pruning: rank the channels of dependency groups."""

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
        self.round_to = round_to  # resolved (round_to: auto depends on the device)
        self.latency = latency
        self.latency_base = 0.0 if latency is None else latency.predict(kept_widths(structure, {}))
        self.head = structure.head_removed(head_cut)
        self.macs0, self.params0 = structure.totals()
        _check_names(scores, structure)
        normalised: dict[str, Tensor] = {}
        for name, score in scores.items():
            layer = structure.layers.get(name)
            if layer is None or layer.kind != "conv":
                continue  # only conv output channels are structured units
            s = _as_scores(name, score, (layer.out_channels,))
            normalised[name] = _normalise(s, normalization)
        _check_layer_ratios(
            config,
            [g.key for g in structure.groups],
            {g.key: [n for n, _, _ in g.convs] for g in structure.groups},
        )
        self.groups: list[ChannelGroup] = []
        self.orders: list[Tensor] = []
        self.costs: list[list[tuple[tuple[str, str], int | Tensor]]] = []
        group_scores: list[Tensor] = []
        for group in structure.groups:
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
            items: list[tuple[tuple[str, str], int | Tensor]] = []
            for layer, dim, mult in group.items:
                if isinstance(mult, Tensor):
                    per_unit = mult if group.units is None else mult[group.units].sum(1)
                    cum = torch.cat([mult.new_zeros(1), per_unit[order].cumsum(0)])
                    items.append(((layer, dim), cum))
                else:
                    items.append(((layer, dim), mult))
            self.costs.append(items)
        # filters a group channel stands for: one per conv whose output it removes
        self.filters = torch.tensor([len(g.convs) for g in self.groups], dtype=torch.float64)
        self.ratios = _unit_ratios(config, [g.key for g in self.groups])
        self.total_filters = float(sum(g.channels * len(g.convs) for g in self.groups))
        if config.scope == "global" and self.groups:
            flat = torch.cat(group_scores)
            gid = torch.cat(
                [torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(group_scores)]
            )
            sorted_gid = gid[torch.sort(flat, stable=True).indices]
            self.sorted_gid = sorted_gid
            units = torch.tensor([g.unit for g in self.groups], dtype=torch.float64)
            self.cum_filters = (self.filters * units)[sorted_gid].cumsum(0)
        if config.ratio > 0 and not self.groups:
            raise ConfigError(
                "no prunable channel group left (all ignored, skipped or unscored): relax "
                "ignore / skip_first or score the network's convs"
            )

    def _raw(self, r: float) -> list[int]:
        if self.config.scope == "layer":
            ratios = self.ratios or [r] * len(self.groups)
            return [
                _round_half_up(q * g.channels / g.unit) * g.unit
                for q, g in zip(ratios, self.groups)
            ]
        # smallest prefix of the global ranking that removes a fraction r of the filters
        m = int(torch.searchsorted(self.cum_filters, r * self.total_filters - 1e-9)) + 1
        m = 0 if r <= 0 else min(m, len(self.sorted_gid))
        units = torch.bincount(self.sorted_gid[:m], minlength=len(self.groups)).tolist()
        return [n * g.unit for n, g in zip(units, self.groups)]

    def counts(self, r: float) -> list[int] | None:
        round_to, floor = self.round_to, self.config.min_channels
        out = []
        for g, n in zip(self.groups, self._raw(r)):
            step = math.lcm(round_to or 1, g.unit)  # kept channels fill whole removal units
            step = step if step > 1 else None
            kept = g.channels - n
            if step and kept < g.channels:
                kept = max(step, _round_half_up(kept / step) * step)
            kept = max(kept, floor)
            if step and kept < g.channels and kept % step:
                kept = math.ceil(kept / step) * step
            kept = min(kept, g.channels)
            if kept <= 0:
                return None
            out.append(g.channels - kept)
        return out

    def emptied(self, r: float) -> str:
        for g, n in zip(self.groups, self._raw(r)):
            if n >= g.channels:
                return f"the channel group of {g.key}"
        return "a layer"

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

    def fill(self, plan: PruningPlan, counts: list[int]) -> None:
        for g, order, n in zip(self.groups, self.orders, counts):
            if n:
                chosen = order[: n // g.unit]
                channels = chosen if g.units is None else g.units[chosen].flatten()
                plan.removed.append((g.key, sorted(channels.tolist())))


def _check_names(scores: dict[str, Tensor], structure: Structure) -> None:
    unknown = sorted(set(scores) - set(structure.names))
    if unknown:
        raise ConfigError(
            f"scores name layers this network lacks ({', '.join(unknown[:3])}): score the same "
            "network that is being pruned"
        )


def _as_scores(name: str, score: Tensor, shape: tuple[int, ...]) -> Tensor:
    if tuple(score.shape) != shape:
        raise ConfigError(
            f"scores for {name} have shape {tuple(score.shape)}, expected {shape}: score the same "
            "network (and granularity) that is being pruned"
        )
    s = score.detach().to("cpu", torch.float64)
    if not torch.isfinite(s).all():
        raise ConfigError(f"scores for {name} contain NaN or inf: check the criterion's statistics")
    return s


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


class _MaskProblem(_Problem):
    """Weight / kernel masks: rank single weights or whole k x k kernels.

    Millions of units: no full sort unless a global target search needs one; the removed set of
    a layer is its ``n`` lowest scores (ties broken by position), found with ``kthvalue``.
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
        _check_names(scores, structure)
        _check_layer_ratios(config, list(prunable_layers(model, granularity)))
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
            s = _normalise(_as_scores(name, scores[name], shape).flatten(), normalization)
            per_unit = weight[0, 0].numel() if granularity == "kernel" else 1
            self.names.append(name)
            self.shapes.append(shape)
            self.flat.append(s.float())
            self.unit_params.append(per_unit)
            self.unit_macs.append(per_unit * layer.positions)
        self.units = [s.numel() for s in self.flat]
        self.ratios = _unit_ratios(config, self.names)
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

    def _raw(self, r: float) -> list[int]:
        if self.config.scope == "layer":
            ratios = self.ratios or [r] * len(self.units)
            return [_round_half_up(q * u) for q, u in zip(ratios, self.units)]
        m = _round_half_up(r * sum(self.units))
        if m not in self._memo:
            if self.sorted_lid is not None:
                counts = torch.bincount(self.sorted_lid[:m], minlength=len(self.names))
            else:
                lowest = _lowest(torch.cat(self.flat), m)
                counts = torch.stack([part.sum() for part in lowest.split(self.units)])
            self._memo[m] = [int(c) for c in counts]
        return self._memo[m]

    def counts(self, r: float) -> list[int] | None:
        out = []
        for units, n in zip(self.units, self._raw(r)):
            kept = min(max(units - n, self.config.min_channels), units)
            if kept <= 0:
                return None
            out.append(units - kept)
        return out

    def emptied(self, r: float) -> str:
        for name, units, n in zip(self.names, self.units, self._raw(r)):
            if n >= units:
                return name
        return "a layer"

    def reduction(self, counts: list[int]) -> dict[str, float]:
        total_units = sum(self.units)
        macs = sum(n * c for n, c in zip(counts, self.unit_macs)) + self.head_macs
        params = sum(n * c for n, c in zip(counts, self.unit_params)) + self.head_params
        return {
            "units": sum(counts) / total_units if total_units else 0.0,
            "macs": macs / self.macs0,
            "params": params / self.params0,
        }

    def fill(self, plan: PruningPlan, counts: list[int]) -> None:
        # a layer's share of the global lowest m is its own lowest n (same tie order), and a
        # clamped layer keeps its top units, so per-layer selection reproduces both scopes
        for name, shape, s, n in zip(self.names, self.shapes, self.flat, counts):
            plan.masks[name] = {"shape": list(shape), "keep": _pack(~_lowest(s, n))}


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


def _pack(keep: Tensor) -> str:
    return base64.b64encode(np.packbits(keep.numpy()).tobytes()).decode("ascii")


def _unpack(text: str, shape: Sequence[int]) -> Tensor:
    count = math.prod(shape)
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=count)
    return torch.from_numpy(bits.astype(bool)).reshape(tuple(shape))


def plan_mask(plan: PruningPlan, layer: str) -> Tensor:
    """The keep mask (bool, unit shape) a mask plan stores for ``layer``."""
    entry = plan.masks[layer]
    return _unpack(entry["keep"], entry["shape"])


# --------------------------------------------------------------------------------------------
# applying


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
