"""The sensitivity YAML (format in :mod:`capl.sensitivity`), validated eagerly.

The ``base``, ``data`` and ``criterion`` sections are read by the same code as a sweep's
(:mod:`capl.sweep.config`), so they accept exactly what a sweep accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from capl.errors import ConfigError
from capl.sweep.config import (
    as_mapping,
    check_keys,
    parse_base,
    parse_criterion,
    parse_data,
    parse_ratios,
)
from capl.sweep.spec import BaseSpec, CriterionSpec

__all__ = ["SensitivityConfig", "load_sensitivity_config", "parse_sensitivity_config"]

_KEYS = (
    "base",
    "data",
    "criterion",
    "ratios",
    "layers",
    "split",
    "max_accuracy_drop",
    "contiguous",
    "seed",
    "trainer",
)
_SPLITS = ("val", "test")


@dataclass
class SensitivityConfig:
    """A validated sensitivity YAML."""

    base: BaseSpec
    data: dict[str, Any]
    criterion: CriterionSpec
    ratios: list[float]
    layers: list[str] | None = None
    split: str = "val"
    max_accuracy_drop: float = 0.01
    contiguous: bool = True
    seed: int = 0
    trainer: dict[str, Any] = field(default_factory=dict)


def _scalars(data: dict[str, Any]) -> dict[str, Any]:
    """The scan's own settings: layers, split, max_accuracy_drop, seed (checked)."""
    layers = data.get("layers")
    if layers is not None and (
        not isinstance(layers, list) or not all(isinstance(p, str) for p in layers)
    ):
        raise ConfigError("layers must be null or a list of module-name patterns")
    split = data.get("split", "val")
    if split not in _SPLITS:
        raise ConfigError(f"split must be val or test, got {split!r}")
    drop = data.get("max_accuracy_drop", 0.01)
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop <= 1:
        raise ConfigError(f"max_accuracy_drop must be a fraction in [0, 1], got {drop!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    return {"layers": layers, "split": split, "max_accuracy_drop": float(drop), "seed": seed}


def parse_sensitivity_config(raw: Any) -> SensitivityConfig:
    """Validate a parsed sensitivity YAML.

    Raises:
        ConfigError: One line naming the offending key.
    """
    data = check_keys("the sensitivity file", raw, _KEYS, ("base", "data", "ratios"))
    scalars = _scalars(data)
    ratios = sorted(set([0.0, *parse_ratios("ratios", data["ratios"])]))
    return SensitivityConfig(
        base=parse_base(data["base"]),
        data=parse_data(data["data"]),
        criterion=parse_criterion("criterion", data.get("criterion", "L1Norm")),
        ratios=ratios,
        contiguous=bool(data.get("contiguous", True)),
        trainer=as_mapping("trainer", data.get("trainer")),
        **scalars,
    )


def load_sensitivity_config(path: str | Path) -> SensitivityConfig:
    """Read and validate a sensitivity YAML file (one-line :class:`ConfigError` on problems)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sensitivity config {str(path)!r} not found: pass --config FILE.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
        return parse_sensitivity_config(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
