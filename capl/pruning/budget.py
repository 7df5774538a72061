"""The budget search: a ranking of units and its cost model, searched for the unit ratio.

A :class:`Problem` (channels of dependency groups in :mod:`capl.pruning.budget_filters`, weights
or kernels in :mod:`capl.pruning.budget_masks`) answers, for a unit ratio ``r``, how many units
each group / layer loses and what that removes (units, MACs, parameters, predicted latency).
:func:`choose_ratio` searches ``r`` for ``target`` budgets; the helpers here validate and
normalise the scores both problems rank.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from capl.errors import ConfigError
from capl.pruning.config import PruningConfig
from capl.pruning.structure import Structure

if TYPE_CHECKING:
    from capl.pruning.plan_format import PruningPlan

_SEARCH_STEPS = 48
_TARGET_TOLERANCE = 0.01


class Problem:
    """A ranking of units and its cost model, evaluated for a unit ratio ``r``.

    Attributes:
        round_to: The resolved channel multiple kept widths come in (``None``: any width).
    """

    round_to: int | None = None

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


def choose_ratio(problem: Problem, config: PruningConfig) -> float:
    """The unit ratio to prune at: ``config.ratio`` itself, or searched to hit the target.

    Raises:
        ConfigError: The target reduction cannot be reached.
    """
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
        step = problem.round_to if problem.round_to and problem.round_to > 1 else None
        widths = f"widths in multiples of {step} (round_to: {config.round_to}), " if step else ""
        raise ConfigError(
            f"{config.target} reduction {goal} is unreachable: at most {best_v:.3f} can be removed "
            f"with {widths}min_channels={config.min_channels} and the ignored layers; lower the "
            f"ratio{' or round_to' if step else ''}"
        )
    return best_r


def check_layer_ratios(
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


def unit_ratios(config: PruningConfig, keys: Sequence[str]) -> list[float] | None:
    """Layer-scope ratio per key from ``config.layer_ratios``; ``None`` without it."""
    return [config.ratio_for(k) for k in keys] if config.layer_ratios else None


def normalise(score: Tensor, how: str) -> Tensor:
    """``score`` divided by its ``how`` norm (``none``, ``l2``, ``max``, ``sum``); zero stays."""
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


def round_half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves up (not Python's banker's rounding)."""
    return math.floor(x + 0.5)


def check_score_names(scores: dict[str, Tensor], structure: Structure) -> None:
    """Raise :class:`ConfigError` if ``scores`` name layers the network lacks."""
    unknown = sorted(set(scores) - set(structure.names))
    if unknown:
        raise ConfigError(
            f"scores name layers this network lacks ({', '.join(unknown[:3])}): score the same "
            "network that is being pruned"
        )


def checked_scores(name: str, score: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``score`` as float64 on the CPU, after checking its shape and that it is finite."""
    if tuple(score.shape) != shape:
        raise ConfigError(
            f"scores for {name} have shape {tuple(score.shape)}, expected {shape}: score the same "
            "network (and granularity) that is being pruned"
        )
    s = score.detach().to("cpu", torch.float64)
    if not torch.isfinite(s).all():
        raise ConfigError(f"scores for {name} contain NaN or inf: check the criterion's statistics")
    return s
