"""The whole ``capl-sensitivity`` run: checks, base model, scan, and the files it writes."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capl.errors import ConfigError
from capl.io import write_json_atomic, write_text_atomic
from capl.sensitivity.config import SensitivityConfig
from capl.sensitivity.plot import plot_sensitivity
from capl.sensitivity.scan import CSV_COLUMNS, scan_layers, suggest_ratios
from capl.sensitivity.suggestion import (
    SUGGESTED_PRUNING_FILE,
    make_suggestion,
    suggested_pruning_yaml,
)
from capl.sweep import preflight
from capl.sweep.signals import stops_on_sigterm
from capl.sweep.spec import GridSpec, SweepConfig

__all__ = ["SensitivityResult", "run_sensitivity"]


@dataclass
class SensitivityResult:
    """What a scan found."""

    base_accuracy: float
    layers: list[str]
    rows: list[dict[str, Any]]
    suggestion: dict[str, Any]


def _check(config: SensitivityConfig, output: Path) -> Any:
    """Everything that can be wrong with the file, before the base model is trained.

    Returns:
        The criterion, built.
    """
    from capl.criteria import Criterion

    preflight.prepare_output(output)
    sections = {"trainer": config.trainer}
    if config.base.train is not None:
        sections["base.train.trainer"] = config.base.train.trainer
    preflight.check_confined(sections, output)
    base = config.base
    preflight.check_base(
        base.network, base.num_classes, base.small_input, base.checkpoint, base.trust_weights
    )
    return preflight.instantiate(
        {"class_path": config.criterion.class_path, "init_args": config.criterion.init_args},
        Criterion,
        "criterion",
    )


def _datamodule(config: SensitivityConfig) -> Any:
    """The DataModule, set up for ``fit`` with the scan's seed."""
    from capl.datamodules import ClassSubsetDataModule

    data_spec = {
        "class_path": config.data["class_path"],
        "init_args": {**config.data["init_args"], "seed": config.seed},
    }
    datamodule = preflight.instantiate(data_spec, ClassSubsetDataModule, "data")
    try:
        datamodule.prepare_data()
        datamodule.setup("fit")
    except ConfigError as err:
        raise ConfigError(f"data: {err}") from None
    return datamodule


def _base_weights(config: SensitivityConfig, output: Path) -> str:
    """The base checkpoint, trained and cached in ``OUTPUT/base/`` as a sweep would."""
    from capl.sweep.base import base_checkpoint

    sweep_like = SweepConfig(
        base=config.base,
        data=config.data,
        grid=GridSpec(criteria=[config.criterion], ratios=[0.0]),
        trainer=config.trainer,
    )
    return base_checkpoint(sweep_like, output)


def _scan(
    config: SensitivityConfig, criterion: Any, datamodule: Any, weights: str
) -> tuple[float, list[dict[str, Any]]]:
    """Build the base network from ``weights`` and scan it on the configured split."""
    from lightning.pytorch import seed_everything

    from capl.evaluation import target_rows
    from capl.models import build_network

    base = config.base
    seed_everything(config.seed, verbose=False)
    num_classes = base.num_classes or datamodule.num_classes
    head = list(range(num_classes)) if base.num_classes else list(datamodule.class_indices)
    network = build_network(
        base.network, num_classes, base.small_input, weights, trust_weights=base.trust_weights
    )
    rows = target_rows(head, datamodule.class_indices)
    loader = datamodule.val_dataloader() if config.split == "val" else datamodule.test_dataloader()
    eval_batches = list(loader)  # before the calibration batches: the order draws loader seeds
    return scan_layers(
        network,
        criterion,
        list(datamodule.calibration_dataloader()),
        eval_batches,
        rows,
        config.ratios,
        datamodule.input_shape,
        config.layers,
    )


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, text.getvalue())


@stops_on_sigterm
def run_sensitivity(config: SensitivityConfig, output: str | Path) -> SensitivityResult:
    """Run the scan described by a sensitivity YAML and write its outputs.

    The base model comes from ``base.checkpoint``, or is trained once with ``capl fit`` and
    cached in ``OUTPUT/base/`` (as in sweeps).

    Returns:
        The base accuracy, scanned layers, CSV rows and the suggestion.
    """
    output = Path(output)
    criterion = _check(config, output)
    datamodule = _datamodule(config)
    weights = _base_weights(config, output)
    base_accuracy, table = _scan(config, criterion, datamodule, weights)
    layer_ratios = suggest_ratios(table, base_accuracy, config.max_accuracy_drop, config.contiguous)
    context = {
        "base_weights": weights,
        "dataset": getattr(datamodule, "name", type(datamodule).__name__),
        "classes": datamodule.class_indices,
    }
    suggestion = make_suggestion(config, table, base_accuracy, layer_ratios, context)
    output.mkdir(parents=True, exist_ok=True)
    _write_csv(table, output / "sensitivity.csv")
    plot_sensitivity(table, base_accuracy, output / "sensitivity.png")
    write_json_atomic(output / "suggestion.json", suggestion)
    write_text_atomic(output / SUGGESTED_PRUNING_FILE, suggested_pruning_yaml(suggestion))
    return SensitivityResult(
        base_accuracy=base_accuracy,
        layers=list(dict.fromkeys(r["layer"] for r in table)),
        rows=table,
        suggestion=suggestion,
    )
