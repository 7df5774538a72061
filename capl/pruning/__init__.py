"""Scores -> plan under a budget -> physical removal (coupled channels together) or masks.

Typical use::

    scores = select_scores(criterion, model, batches, rows)   # collect + score, in one call
    plan = make_plan(model, criterion, scores, PruningConfig(ratio=0.5), example_input)
    apply_plan(model, plan)           # or on a freshly built network + its weights
    json_text = json.dumps(plan.to_dict())
"""

from capl.pruning.config import PruningConfig, auto_round_to
from capl.pruning.plan import make_plan
from capl.pruning.plan_format import PruningPlan, fingerprint, plan_mask
from capl.pruning.recalibrate import batchnorm_layers, recalibrate_batchnorm
from capl.pruning.removal import apply_plan, class_subset_head, make_masks_permanent
from capl.pruning.report import conv_linear_macs, nonzero_parameters, pruning_report
from capl.pruning.select import select_scores
from capl.pruning.structure import prunable_layers

__all__ = [
    "PruningConfig",
    "PruningPlan",
    "apply_plan",
    "auto_round_to",
    "batchnorm_layers",
    "class_subset_head",
    "conv_linear_macs",
    "fingerprint",
    "make_masks_permanent",
    "make_plan",
    "nonzero_parameters",
    "plan_mask",
    "prunable_layers",
    "pruning_report",
    "recalibrate_batchnorm",
    "select_scores",
]
