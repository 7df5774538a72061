"""Per-layer pruning sensitivity: prune one layer at a time and watch the accuracy.

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
"""

from __future__ import annotations

import copy
import csv
import fnmatch
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from capl.errors import ConfigError
from capl.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from capl.sweep import preflight
from capl.sweep.grid import (
    BaseSpec,
    CriterionSpec,
    GridSpec,
    SweepConfig,
    _base,
    _check_keys,
    _criterion,
    _data,
    _mapping,
    _ratios,
)
from capl.sweep.signals import stops_on_sigterm

__all__ = [
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

log = logging.getLogger(__name__)

SUGGESTED_PRUNING_FILE = "suggested_pruning.yaml"

CSV_COLUMNS = (
    "layer",
    "ratio",
    "accuracy",
    "accuracy_drop",
    "macs_removed",
    "params_removed",
    "channels_removed",
    "members",
)


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


@dataclass
class SensitivityResult:
    """What a scan found."""

    base_accuracy: float
    layers: list[str]
    rows: list[dict[str, Any]]
    suggestion: dict[str, Any]


def parse_sensitivity_config(raw: Any) -> SensitivityConfig:
    """Validate a parsed sensitivity YAML.

    Raises:
        ConfigError: One line naming the offending key.
    """
    data = _check_keys(
        "the sensitivity file",
        raw,
        (
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
        ),
        ("base", "data", "ratios"),
    )
    layers = data.get("layers")
    if layers is not None and (
        not isinstance(layers, list) or not all(isinstance(p, str) for p in layers)
    ):
        raise ConfigError("layers must be null or a list of module-name patterns")
    split = data.get("split", "val")
    if split not in ("val", "test"):
        raise ConfigError(f"split must be val or test, got {split!r}")
    drop = data.get("max_accuracy_drop", 0.01)
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop <= 1:
        raise ConfigError(f"max_accuracy_drop must be a fraction in [0, 1], got {drop!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    ratios = sorted(set([0.0, *_ratios("ratios", data["ratios"])]))
    return SensitivityConfig(
        base=_base(data["base"]),
        data=_data(data["data"]),
        criterion=_criterion("criterion", data.get("criterion", "L1Norm")),
        ratios=ratios,
        layers=layers,
        split=split,
        max_accuracy_drop=float(drop),
        contiguous=bool(data.get("contiguous", True)),
        seed=seed,
        trainer=_mapping("trainer", data.get("trainer")),
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


# --------------------------------------------------------------------------------------------
# The scan


def _units(
    network: nn.Module, granularity: str, example: torch.Tensor
) -> tuple[dict[str, list[str]], list[str]]:
    """Scan units (name -> member modules) in forward order, and all prunable module names."""
    from capl.pruning import prunable_layers
    from capl.pruning.structure import analyse

    if granularity == "filter":
        structure = analyse(network, example)
        units = {g.key: [name for name, _, _ in g.convs] for g in structure.groups}
        prunable = list(structure.conv_order)
    else:
        prunable = list(prunable_layers(network, granularity))
        units = {name: [name] for name in prunable}
    return units, prunable


def scan_layers(
    network: nn.Module,
    criterion: Any,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    rows: Sequence[int],
    ratios: Sequence[float],
    input_shape: Sequence[int],
    layers: Sequence[str] | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Prune each layer alone at each ratio and measure the k-way accuracy (plain PyTorch).

    Args:
        network: The base network (left unchanged).
        criterion: A capl criterion; scores are computed once on the base network.
        batches: Calibration batches for data-driven criteria.
        eval_batches: Batches the accuracy is measured on.
        rows: Logit rows of the selected classes (``capl.evaluation.target_rows``).
        ratios: Ratios to scan (per layer, ``scope: layer``).
        input_shape: ``(C, H, W)`` of one image.
        layers: ``fnmatch`` patterns of the units to scan (unit names or member names);
            ``None`` scans all.

    Returns:
        The base accuracy and one row per (layer, ratio) with the CSV columns.

    Raises:
        ConfigError: Patterns that match no prunable layer.
    """
    from capl.evaluation import accuracy_from_confusion, confusion_matrix
    from capl.pruning import PruningConfig, apply_plan, make_plan, select_scores

    network = copy.deepcopy(network).cpu().eval()
    example = torch.zeros(1, *input_shape)
    units, prunable = _units(network, criterion.granularity, example)
    if layers is not None:
        chosen = {
            key: members
            for key, members in units.items()
            if any(fnmatch.fnmatch(n, p) for p in layers for n in (key, *members))
        }
        if not chosen:
            raise ConfigError(
                f"layers {list(layers)} match no prunable layer (e.g. {', '.join(list(units)[:3])})"
            )
        units = chosen

    scores = select_scores(criterion, network, batches, rows)

    def accuracy(net: nn.Module) -> float:
        return float(accuracy_from_confusion(confusion_matrix(net, eval_batches, rows))["accuracy"])

    base_accuracy = accuracy(network)
    out: list[dict[str, Any]] = []
    for key, members in units.items():
        ignore = [name for name in prunable if name not in members]
        for ratio in ratios:
            row = {"layer": key, "ratio": float(ratio), "members": ";".join(members)}
            if ratio == 0.0:
                row.update(
                    accuracy=base_accuracy,
                    macs_removed=0.0,
                    params_removed=0.0,
                    channels_removed=0.0,
                )
            else:
                # exact widths: a scan measures the ratio itself (the suggestion replays it so)
                config = PruningConfig(ratio=ratio, scope="layer", ignore=ignore, round_to=None)
                try:
                    plan = make_plan(network, criterion, scores, config, example)
                except ConfigError as err:  # e.g. the ratio would empty a tiny layer
                    log.warning("layer %s ratio %s: %s", key, ratio, err)
                    continue
                pruned = copy.deepcopy(network)
                apply_plan(pruned, plan, example)
                report = plan.report
                row.update(
                    accuracy=accuracy(pruned),
                    macs_removed=float(report.get("macs_removed_fraction", 0.0)),
                    params_removed=float(report.get("params_removed_fraction", 0.0)),
                    channels_removed=float(report.get("channels_removed_fraction", 0.0)),
                )
            row["accuracy_drop"] = base_accuracy - row["accuracy"]
            out.append({c: row[c] for c in CSV_COLUMNS})
        log.info(
            "sensitivity %s: %s",
            key,
            ", ".join(f"{r['ratio']:.2f}->{r['accuracy']:.3f}" for r in out if r["layer"] == key),
        )
    return base_accuracy, out


def suggest_ratios(
    rows: Sequence[Mapping[str, Any]],
    base_accuracy: float,
    max_drop: float,
    contiguous: bool = True,
) -> dict[str, float]:
    """Per layer, the largest scanned ratio whose accuracy drop is at most ``max_drop``.

    Args:
        rows: Rows with ``layer``, ``ratio`` and ``accuracy``.
        base_accuracy: Accuracy of the unpruned network.
        max_drop: Allowed absolute drop (0.01 = one percentage point).
        contiguous: Also require every smaller scanned ratio of that layer to stay within the
            drop, so a lucky high ratio after a failing lower one is not suggested.

    Returns:
        ``{layer: ratio}`` in first-seen layer order; 0.0 when no ratio qualifies.
    """
    by_layer: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        by_layer.setdefault(str(row["layer"]), []).append(
            (float(row["ratio"]), float(row["accuracy"]))
        )
    eps = 1e-12  # equal accuracies computed two ways must not count as a drop
    suggestion: dict[str, float] = {}
    for layer, points in by_layer.items():
        best = 0.0
        for ratio, acc in sorted(points):
            if base_accuracy - acc <= max_drop + eps:
                best = max(best, ratio)
            elif contiguous:
                break
        suggestion[layer] = best
    return suggestion


def suggested_pruning(suggestion: Mapping[str, Any]) -> dict[str, Any]:
    """The ``PruningCallback`` entry that prunes every layer at its suggested ratio.

    Args:
        suggestion: ``suggestion.json`` content (``layer_ratios`` and ``criterion``).

    Returns:
        ``{"class_path": "capl.callbacks.PruningCallback", "init_args": {...}}`` with the
        criterion, ``ratio: 0.0`` (groups that were not scanned stay whole), ``scope: layer``,
        ``round_to: null`` (the scan's exact widths) and ``layer_ratios``.

    Raises:
        ConfigError: The suggestion's ratios are not a valid ``PruningConfig.layer_ratios``.
    """
    from capl.pruning import PruningConfig

    layer_ratios = {str(k): float(v) for k, v in dict(suggestion["layer_ratios"]).items()}
    PruningConfig(ratio=0.0, scope="layer", layer_ratios=layer_ratios)  # validate eagerly
    criterion = dict(suggestion["criterion"])
    return {
        "class_path": "capl.callbacks.PruningCallback",
        "init_args": {
            "criterion": {
                "class_path": criterion["class_path"],
                "init_args": dict(criterion.get("init_args") or {}),
            },
            "ratio": 0.0,
            "scope": "layer",
            "round_to": None,
            "layer_ratios": layer_ratios,
        },
    }


def suggested_pruning_yaml(suggestion: Mapping[str, Any]) -> str:
    """``suggested_pruning.yaml`` text: a commented one-item ``trainer.callbacks`` list."""
    header = (
        f"# capl-sensitivity suggestion for {suggestion.get('network')} on "
        f"{suggestion.get('dataset')} classes {suggestion.get('classes')}: each layer at the\n"
        f"# largest ratio that kept the accuracy drop within "
        f"{suggestion.get('max_accuracy_drop')} when pruned alone (drops add up).\n"
        "# Paste this item under trainer.callbacks of a run config in place of its\n"
        "# PruningCallback (e.g. configs/runs/prune_test.yaml) and point model.weights at\n"
        f"# {suggestion.get('base_weights')}. Layers not listed keep ratio (0.0: unpruned).\n"
    )
    body = yaml.safe_dump(
        [suggested_pruning(suggestion)], sort_keys=False, default_flow_style=False
    )
    return header + body


def plot_sensitivity(
    rows: Sequence[Mapping[str, Any]], base_accuracy: float, path: str | Path, top: int = 6
) -> Path:
    """Accuracy vs ratio, one line per layer, coloured by depth.

    Up to 16 layers get a legend outside the axes; with more, a colour bar shows depth and only
    the ``top`` most sensitive layers (largest drop at their highest ratio) are labelled.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(str(r["layer"]) for r in rows))
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(9, 5))
    worst: list[tuple[float, str]] = []
    for i, layer in enumerate(layers):
        points = sorted(
            (float(r["ratio"]), float(r["accuracy"])) for r in rows if r["layer"] == layer
        )
        xs, ys = zip(*points)
        colour = cmap(i / max(len(layers) - 1, 1))
        ax.plot(xs, ys, marker="o", markersize=3, color=colour, linewidth=1.2, label=layer)
        worst.append((base_accuracy - ys[-1], layer))
        if len(layers) > 16 and layer in {n for _, n in sorted(worst, reverse=True)[:top]}:
            ax.annotate(
                layer,
                (xs[-1], ys[-1]),
                fontsize=7,
                xytext=(3, 0),
                textcoords="offset points",
                color=colour,
            )
    ax.axhline(base_accuracy, color="grey", linestyle="--", linewidth=0.8, label="base")
    ax.set_xlabel("ratio of the layer's filters removed")
    ax.set_ylabel("accuracy (k-way)")
    ax.set_title("Per-layer pruning sensitivity")
    ax.grid(alpha=0.3)
    if len(layers) <= 16:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    else:
        bar = fig.colorbar(
            plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(layers) - 1)), ax=ax
        )
        bar.set_label("layer depth (forward order)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


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
    from lightning.pytorch import seed_everything

    from capl.datamodules import ClassSubsetDataModule
    from capl.evaluation import target_rows
    from capl.models import build_network
    from capl.strategies import Criterion
    from capl.sweep.runner import base_checkpoint

    output = Path(output)
    # everything that can be wrong with the file is found before the base model is trained
    preflight.prepare_output(output)
    sections = {"trainer": config.trainer}
    if config.base.train is not None:
        sections["base.train.trainer"] = config.base.train.trainer
    preflight.check_confined(sections, output)
    base = config.base
    preflight.check_base(
        base.network, base.num_classes, base.small_input, base.checkpoint, base.trust_weights
    )
    criterion = preflight.instantiate(
        {"class_path": config.criterion.class_path, "init_args": config.criterion.init_args},
        Criterion,
        "criterion",
    )
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
    sweep_like = SweepConfig(
        base=config.base,
        data=config.data,
        grid=GridSpec(criteria=[config.criterion], ratios=[0.0]),
        trainer=config.trainer,
    )
    weights = base_checkpoint(sweep_like, output)
    seed_everything(config.seed, verbose=False)
    num_classes = base.num_classes or datamodule.num_classes
    head = list(range(num_classes)) if base.num_classes else list(datamodule.class_indices)
    network = build_network(
        base.network, num_classes, base.small_input, weights, trust_weights=base.trust_weights
    )
    rows = target_rows(head, datamodule.class_indices)
    loader = datamodule.val_dataloader() if config.split == "val" else datamodule.test_dataloader()
    eval_batches = list(loader)
    base_accuracy, table = scan_layers(
        network,
        criterion,
        list(datamodule.calibration_dataloader()),
        eval_batches,
        rows,
        config.ratios,
        datamodule.input_shape,
        config.layers,
    )
    layer_ratios = suggest_ratios(table, base_accuracy, config.max_accuracy_drop, config.contiguous)
    details = {}
    for layer, ratio in layer_ratios.items():
        row = next(r for r in table if r["layer"] == layer and r["ratio"] == ratio)
        details[layer] = {
            "ratio": ratio,
            "accuracy": row["accuracy"],
            "accuracy_drop": row["accuracy_drop"],
            "members": row["members"].split(";"),
        }
    suggestion = {
        "network": config.base.network,
        "base_weights": weights,
        "dataset": getattr(datamodule, "name", type(datamodule).__name__),
        "classes": list(datamodule.class_indices),
        "criterion": {
            "class_path": config.criterion.class_path,
            "init_args": config.criterion.init_args,
        },
        "split": config.split,
        "base_accuracy": base_accuracy,
        "max_accuracy_drop": config.max_accuracy_drop,
        "contiguous": config.contiguous,
        "ratios_scanned": config.ratios,
        "layer_ratios": layer_ratios,
        "details": details,
        "usage": "layer_ratios maps module names (fnmatch patterns; for filter criteria the first "
        "conv of a coupled group) to the largest ratio that kept the accuracy drop within "
        "max_accuracy_drop when that layer alone was pruned; give it to a pruning run as "
        "PruningCallback(layer_ratios=...) with scope: layer (ready-made: "
        f"{SUGGESTED_PRUNING_FILE} next to this file). Drops of several layers add up: "
        "lower max_accuracy_drop or retrain.",
    }
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
