"""Scores -> plan under a budget: :func:`make_plan`, the planner's entry point.

The plan format lives in :mod:`capl.pruning.plan_format`, the budget search in
:mod:`capl.pruning.budget` (structured units in :mod:`~capl.pruning.budget_filters`, masks in
:mod:`~capl.pruning.budget_masks`) and removal in :mod:`capl.pruning.removal`; their public
names are re-exported here, where callers have always imported them from.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from capl.criteria.base import Criterion
from capl.errors import ConfigError
from capl.models import head_outputs, model_device
from capl.pruning._threads import single_threaded
from capl.pruning.budget import Problem, choose_ratio
from capl.pruning.budget_filters import FilterProblem
from capl.pruning.budget_masks import MaskProblem
from capl.pruning.config import PruningConfig
from capl.pruning.latency_table import LatencyTable
from capl.pruning.plan_format import PLAN_VERSION, PruningPlan, fingerprint, plan_mask
from capl.pruning.removal import apply_plan, class_subset_head, make_masks_permanent
from capl.pruning.report import pruning_report
from capl.pruning.structure import Structure, analyse, prunable_layers

__all__ = [
    "PLAN_VERSION",
    "PruningPlan",
    "apply_plan",
    "class_subset_head",
    "fingerprint",
    "make_masks_permanent",
    "make_plan",
    "plan_mask",
    "prunable_layers",
]

log = logging.getLogger(__name__)


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
    outputs = head_outputs(model.get_submodule(structure.classifier))
    rows = _check_head_rows(head_rows, outputs)
    head_cut = 0 if rows is None else outputs - len(rows)
    problem, round_to = _problem(model, criterion, scores, config, structure, head_cut, latency)
    ratio = choose_ratio(problem, config)
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
    _log_plan(plan)
    return plan


def _problem(
    model: nn.Module,
    criterion: Criterion,
    scores: dict[str, Tensor],
    config: PruningConfig,
    structure: Structure,
    head_cut: int,
    latency: LatencyTable | None,
) -> tuple[Problem, int | None]:
    """The budget problem for ``criterion``'s granularity, and the resolved ``round_to``."""
    excluded = _excluded(structure, config)
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
        problem = FilterProblem(
            structure, scores, criterion.normalization, config, excluded, head_cut, round_to,
            latency,
        )  # fmt: skip
        return problem, round_to
    if criterion.granularity not in ("weight", "kernel"):
        raise ConfigError(
            f"criterion {type(criterion).__name__} has unknown granularity "
            f"{criterion.granularity!r}: use filter, kernel or weight"
        )
    if config.target == "latency":
        raise ConfigError(
            f"target latency needs physically removed channels, but {type(criterion).__name__}"
            f" masks {criterion.granularity}s: use a filter criterion or target macs / params"
        )
    if isinstance(config.round_to, int):  # an explicit multiple, not the default auto
        log.warning(
            "round_to=%s ignored: masks (%s granularity) keep no channel counts",
            config.round_to,
            criterion.granularity,
        )
    masks = MaskProblem(
        structure, model, scores, criterion.granularity, criterion.normalization, config,
        excluded, head_cut,
    )  # fmt: skip
    return masks, None


def _log_plan(plan: PruningPlan) -> None:
    config = plan.config
    log.info(
        "pruning plan %s/%s ratio %.3f: removed %.1f%% channels, %.1f%% params, %.1f%% MACs "
        "(nonzero weights %.1f%%)",
        plan.criterion.get("name"), config.scope, config.ratio,
        100 * plan.report["channels_removed_fraction"],
        100 * plan.report["params_removed_fraction"],
        100 * plan.report["macs_removed_fraction"],
        100 * plan.report["weights_removed_fraction"],
    )  # fmt: skip


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


def _predicted_latency(problem: Problem, estimate: dict[str, float]) -> dict[str, Any]:
    """``report.selection`` entries of a plan made with a latency table (else none)."""
    if not isinstance(problem, FilterProblem) or problem.latency is None:
        return {}
    if "latency" not in estimate:
        return {}
    table, base = problem.latency, problem.latency_base
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
