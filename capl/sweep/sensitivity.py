"""Former home of the sensitivity scan, now :mod:`capl.sensitivity`; its names stay importable."""

from capl.sensitivity.config import (
    SensitivityConfig,
    load_sensitivity_config,
    parse_sensitivity_config,
)
from capl.sensitivity.plot import plot_sensitivity
from capl.sensitivity.run import SensitivityResult, run_sensitivity
from capl.sensitivity.scan import CSV_COLUMNS, scan_layers, suggest_ratios
from capl.sensitivity.suggestion import (
    SUGGESTED_PRUNING_FILE,
    suggested_pruning,
    suggested_pruning_yaml,
)

__all__ = [
    "CSV_COLUMNS",
    "SUGGESTED_PRUNING_FILE",
    "SensitivityConfig",
    "SensitivityResult",
    "load_sensitivity_config",
    "parse_sensitivity_config",
    "plot_sensitivity",
    "run_sensitivity",
    "scan_layers",
    "suggest_ratios",
    "suggested_pruning",
    "suggested_pruning_yaml",
]
