"""Per-layer pruning sensitivity (``capl-sensitivity``): prune one layer at a time, watch accuracy.

For every prunable unit of the base network (a *layer*: for filter criteria a dependency group of
coupled convolutions, named by its first conv, because residual adds force some convs to lose the
same channels; for weight/kernel criteria a single Conv2d/Linear) and every ratio, the unit alone
is pruned (``scope: layer``, every other prunable layer in ``ignore``) with scores computed once
on the base network, and the k-way accuracy on the DataModule's ``val`` (default) or ``test``
split is recorded. Outputs in the output folder:

* ``sensitivity.csv``: ``layer, ratio, accuracy, accuracy_drop, macs_removed, params_removed,
  channels_removed, members`` (ratio 0 is always scanned: it is the base accuracy).
* ``sensitivity.png``: accuracy vs ratio, one line per layer, coloured by depth.
* ``suggestion.json``: per layer the largest scanned ratio whose accuracy drop stays within
  ``max_accuracy_drop`` (and, with ``contiguous``, every smaller ratio too), as
  ``layer_ratios: {module name: ratio}``. The names are the scan units' names (for filter
  criteria a group's key conv, for masks the layer), exactly what
  ``PruningConfig.layer_ratios`` / ``PruningCallback(layer_ratios=...)`` matches.
* ``suggested_pruning.yaml``: the same as a ``PruningCallback`` entry (``class_path`` and
  ``init_args`` with the criterion, ``scope: layer``, ``ratio: 0.0`` for unscanned groups and
  ``layer_ratios``), to paste under ``trainer.callbacks`` of a run config.

The sensitivity YAML::

    base: {network: resnet20, small_input: true, num_classes: 10, checkpoint: PATH}  # or train:
    data: {class_path: DigitsSubset, init_args: {classes: [3, 5, 8]}}
    criterion: L1Norm                 # or {class_path: ..., init_args: {...}}
    ratios: [0.25, 0.5, 0.75]
    layers: null                      # fnmatch patterns of the layers to scan; null = all
    split: val                        # val or test
    max_accuracy_drop: 0.01           # absolute (0.01 = one percentage point)
    contiguous: true
    seed: 0
    trainer: {accelerator: cpu}       # only used when base.train trains the base model

Modules: :mod:`~capl.sensitivity.config` (the YAML), :mod:`~capl.sensitivity.scan` (the scan in
plain PyTorch and the suggestion rule), :mod:`~capl.sensitivity.suggestion` (``suggestion.json``
and the ready PruningCallback entry), :mod:`~capl.sensitivity.plot` (``sensitivity.png``),
:mod:`~capl.sensitivity.run` (the whole run) and :mod:`~capl.sensitivity.cli` (the console entry
point). The names below are imported on first use, so that the console entry point starts
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module defining it.
_HOMES = {
    "CSV_COLUMNS": "scan",
    "SUGGESTED_PRUNING_FILE": "suggestion",
    "SensitivityConfig": "config",
    "SensitivityResult": "run",
    "load_sensitivity_config": "config",
    "parse_sensitivity_config": "config",
    "plot_sensitivity": "plot",
    "run_sensitivity": "run",
    "scan_layers": "scan",
    "suggest_ratios": "scan",
    "suggested_pruning": "suggestion",
    "suggested_pruning_yaml": "suggestion",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
