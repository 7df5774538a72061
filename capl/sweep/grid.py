"""The sweep YAML: typed settings, eager validation and the grid of points.

A sweep file has these sections (only ``base``, ``data`` and ``grid`` are required)::

    name: demo                       # free text, shown in logs
    base:                            # the model every point prunes
      network: resnet20
      small_input: true
      num_classes: 10                # head rows of the base model
      checkpoint: null               # a state_dict / Lightning checkpoint path or a torchvision
                                     # weights name (IMAGENET1K_V1); null -> train it (below)
      trust_weights: false           # true: the checkpoint may be fully unpickled (can run
                                     # code; only for files from a trusted source)
      train:                         # used only without checkpoint; cached in OUTPUT/base/<hash>
        max_epochs: 5
        seed: 0
        optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.05, momentum: 0.9}}
        lr_scheduler: null
        data: {classes: null}        # DataModule init_args overrides (default: all classes)
        trainer: {}                  # further Trainer options
    data:                            # as ``data:`` in capl configs
      class_path: capl.datamodules.DigitsSubset
      init_args: {batch_size: 64, calibration_samples_per_class: 16}
    grid:
      criteria:                      # short names or class_path/init_args (+ optional name,
        - OCAP                       #   ratios, scopes, targets, seeds overriding the grid lists)
        - {class_path: LRP, init_args: {rules: auto}, ratios: [0.3, 0.5]}
      ratios: [0.3, 0.5, 0.7]
      scopes: [global]               # layer and/or global
      targets: [macs]                # null, macs, params and/or latency (pruning.latency:
                                     #   {backend, batch_size, threads, cache} says where)
      classes: [[3, 5, 8]]           # class subsets; default the data section's classes
      seeds: [0]
      retrain_epochs: [0, 1]         # 0 = prune and measure only
    pruning:                         # PruningCallback init_args (all but criterion, ratio,
      bn_recalibration: 10           #   scope, target: the grid's) -- the same schema
      round_to: auto
    retrain:                         # for points with retrain_epochs > 0
      optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.01, momentum: 0.9}}
      lr_scheduler: null
      early_stopping_patience: null
      trainer: {}                    # e.g. limit_train_batches
    benchmark:                       # BenchmarkCallback init_args (all but output, run_name)
      batch_sizes: [1, 32]
      input_size: null               # e.g. [3, 224, 224]: MACs and latency at that size
    trainer: {accelerator: cpu, devices: 1}   # Trainer options shared by every run

Every problem is reported as a one-line :class:`~capl.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from capl.errors import ConfigError
from capl.sweep.options import benchmark_options, pruning_options

__all__ = [
    "BaseSpec",
    "CriterionSpec",
    "GridSpec",
    "Point",
    "RetrainSpec",
    "Skipped",
    "SweepConfig",
    "TrainSpec",
    "expand_grid",
    "load_sweep_config",
    "parse_sweep_config",
    "stable_hash",
]

_SCOPES = ("layer", "global")
_TARGETS = (None, "macs", "params", "latency")


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hex digest of ``obj``'s canonical JSON (sorted keys): equal settings, equal hash."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# --------------------------------------------------------------------------------------------
# Typed sections


@dataclass
class TrainSpec:
    """How the sweep trains the base model when no checkpoint is given."""

    max_epochs: int = 10
    seed: int = 0
    optimizer: dict[str, Any] | None = None
    lr_scheduler: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=lambda: {"classes": None})
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class BaseSpec:
    """The base model every grid point starts from."""

    network: str
    small_input: bool = False
    num_classes: int | None = None
    checkpoint: str | None = None
    train: TrainSpec | None = None
    trust_weights: bool = False


@dataclass
class CriterionSpec:
    """One criterion of the grid, with optional per-criterion grid overrides."""

    class_path: str
    init_args: dict[str, Any]
    label: str
    ratios: list[float] | None = None
    scopes: list[str] | None = None
    targets: list[str | None] | None = None
    seeds: list[int] | None = None

    @property
    def class_name(self) -> str:
        """The criterion's class name (``OCAP``)."""
        return self.class_path.rsplit(".", 1)[-1]

    def criterion_class(self) -> type:
        """Import the criterion class."""
        module, _, name = self.class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)


@dataclass
class GridSpec:
    """The lists whose product is the sweep."""

    criteria: list[CriterionSpec]
    ratios: list[float]
    scopes: list[str] = field(default_factory=lambda: ["global"])
    targets: list[str | None] = field(default_factory=lambda: [None])
    classes: list[Any] = field(default_factory=lambda: [None])
    seeds: list[int] = field(default_factory=lambda: [0])
    retrain_epochs: list[int] = field(default_factory=lambda: [0])


@dataclass
class RetrainSpec:
    """Retraining options for points with ``retrain_epochs > 0``."""

    optimizer: dict[str, Any] | None = None
    lr_scheduler: dict[str, Any] | None = None
    early_stopping_patience: int | None = None
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """A whole sweep file, validated."""

    base: BaseSpec
    data: dict[str, Any]
    grid: GridSpec
    name: str = "sweep"
    # the PruningCallback / BenchmarkCallback init_args every point shares (capl.sweep.options)
    pruning: dict[str, Any] = field(default_factory=dict)
    retrain: RetrainSpec = field(default_factory=RetrainSpec)
    benchmark: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Hash of everything but the grid: points of one output folder must share it."""
        settings = asdict(self)
        for key in ("grid", "name"):
            settings.pop(key)
        settings["base"].pop("trust_weights")  # how a file is read, not what is run
        return stable_hash(settings)


@dataclass(frozen=True)
class Point:
    """One grid point: a criterion at a ratio, scope, target, class subset, seed and retraining."""

    index: int
    point_id: str
    criterion: CriterionSpec
    ratio: float
    scope: str
    target: str | None
    classes: Any
    seed: int
    retrain_epochs: int

    def criterion_init_args(self) -> dict[str, Any]:
        """The criterion's init_args; Random draws with the point's seed unless told otherwise."""
        args = dict(self.criterion.init_args)
        if self.criterion.class_name == "Random":
            args.setdefault("seed", self.seed)
        return args

    def settings(self, network: str | None = None) -> dict[str, Any]:
        """The point's settings in ``benchmark.json`` shape (rows of failed points use them)."""
        classes = self.classes if isinstance(self.classes, list) else [self.classes]
        out: dict[str, Any] = {
            "criterion": {"name": self.criterion.class_name, **self.criterion_init_args()},
            "ratio": self.ratio,
            "scope": self.scope,
            "target": self.target,
            "seed": self.seed,
            "retrain_epochs": self.retrain_epochs,
            "classes": {"indices": [c for c in classes if c is not None]},
        }
        if network is not None:
            out["model"] = network
        return out


@dataclass(frozen=True)
class Skipped:
    """A combination left out of the grid, and why."""

    point_id: str
    reason: str


# --------------------------------------------------------------------------------------------
# Parsing helpers


def _check_keys(
    section: str, data: Any, allowed: Sequence[str], required: Sequence[str] = ()
) -> dict:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{section} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(str, unknown))} in {section}: valid are "
            f"{', '.join(allowed)}"
        )
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"{section} needs {', '.join(missing)}")
    return dict(data)


def _int(where: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where} must be >= {minimum}, got {value}")
    return value


def _list(where: str, value: Any, allow_empty: bool = False) -> list:
    if not isinstance(value, list):
        value = [value]
    if not value and not allow_empty:
        raise ConfigError(f"{where} must be a non-empty list")
    return value


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return dict(value)


def _class_spec(where: str, value: Any) -> dict[str, Any] | None:
    """An optimizer / scheduler ``class_path``/``init_args`` mapping (or null)."""
    if value is None:
        return None
    data = _check_keys(where, value, ("class_path", "init_args"), ("class_path",))
    if not isinstance(data["class_path"], str):
        raise ConfigError(f"{where}.class_path must be a string")
    return {
        "class_path": data["class_path"],
        "init_args": _mapping(f"{where}.init_args", data.get("init_args")),
    }


def _ratios(where: str, value: Any) -> list[float]:
    out = []
    for r in _list(where, value):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
            raise ConfigError(f"{where}: ratio {r!r} is not a fraction in [0, 1)")
        out.append(float(r))
    return out


def _scopes(where: str, value: Any) -> list[str]:
    out = _list(where, value)
    bad = [s for s in out if s not in _SCOPES]
    if bad:
        raise ConfigError(f"{where}: unknown scope(s) {bad}: choose layer and/or global")
    return out


def _targets(where: str, value: Any) -> list[str | None]:
    out = _list(where, value)
    bad = [t for t in out if t not in _TARGETS]
    if bad:
        raise ConfigError(
            f"{where}: unknown target(s) {bad}: choose null, macs, params and/or latency"
        )
    return out


def _criterion(where: str, value: Any) -> CriterionSpec:
    from capl.strategies import available_criteria

    registry = available_criteria()
    if isinstance(value, str):
        value = {"class_path": value}
    data = _check_keys(
        where,
        value,
        ("class_path", "init_args", "name", "ratios", "scopes", "targets", "seeds"),
        ("class_path",),
    )
    path = data["class_path"]
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}.class_path must be a criterion name or dotted path")
    short = path.rsplit(".", 1)[-1]
    by_lower = {k.lower(): k for k in registry}
    if "." not in path or path.startswith("capl.strategies."):
        if short.lower() not in by_lower:
            raise ConfigError(
                f"{where}: unknown criterion {path!r}: choose one of {', '.join(sorted(registry))}"
            )
        path = f"capl.strategies.{by_lower[short.lower()]}"
    else:  # only a Criterion subclass may be built from a config (never subprocess.run)
        from capl.strategies import Criterion
        from capl.sweep.preflight import import_class

        import_class(path, Criterion, where)
    init_args = _mapping(f"{where}.init_args", data.get("init_args"))
    label = data.get("name") or path.rsplit(".", 1)[-1].lower()
    if not isinstance(label, str) or not label.replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"{where}.name must be letters, digits, '_' or '.', got {label!r}")
    return CriterionSpec(
        class_path=path,
        init_args=init_args,
        label=label,
        ratios=_ratios(f"{where}.ratios", data["ratios"]) if "ratios" in data else None,
        scopes=_scopes(f"{where}.scopes", data["scopes"]) if "scopes" in data else None,
        targets=_targets(f"{where}.targets", data["targets"]) if "targets" in data else None,
        seeds=[_int(f"{where}.seeds", s) for s in _list(f"{where}.seeds", data["seeds"])]
        if "seeds" in data
        else None,
    )


def _classes(where: str, value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(c, (int, str)) and not isinstance(c, bool) for c in value)
    ):
        return list(value)
    raise ConfigError(
        f"{where}: a class subset is null (all), a name (e.g. similar) or a non-empty list of "
        f"class indices/names, got {value!r}"
    )


def _data(value: Any) -> dict[str, Any]:
    data = _check_keys("data", value, ("class_path", "init_args"), ("class_path",))
    path = data["class_path"]
    if not isinstance(path, str):
        raise ConfigError("data.class_path must be a DataModule class name or dotted path")
    if "." not in path:
        import capl.datamodules

        if not hasattr(capl.datamodules, path):
            raise ConfigError(f"data.class_path: unknown DataModule {path!r} in capl.datamodules")
        path = f"capl.datamodules.{path}"
    else:
        from capl.datamodules import ClassSubsetDataModule
        from capl.sweep.preflight import import_class

        import_class(path, ClassSubsetDataModule, "data.class_path")
    return {"class_path": path, "init_args": _mapping("data.init_args", data.get("init_args"))}


def _base(value: Any) -> BaseSpec:
    from capl.models import SUPPORTED_NETWORKS

    data = _check_keys(
        "base",
        value,
        ("network", "small_input", "num_classes", "checkpoint", "train", "trust_weights"),
        ("network",),
    )
    trust = data.get("trust_weights", False)
    if not isinstance(trust, bool):
        raise ConfigError(f"base.trust_weights must be true or false, got {trust!r}")
    if data["network"] not in SUPPORTED_NETWORKS:
        raise ConfigError(
            f"base.network: unknown network {data['network']!r}: choose one of "
            f"{', '.join(SUPPORTED_NETWORKS)}"
        )
    num_classes = data.get("num_classes")
    if num_classes is not None:
        _int("base.num_classes", num_classes, 1)
    checkpoint = data.get("checkpoint")
    train = None
    if checkpoint is None:
        raw = _check_keys(
            "base.train",
            data.get("train") or {},
            ("max_epochs", "seed", "optimizer", "lr_scheduler", "data", "trainer"),
        )
        train = TrainSpec(
            max_epochs=_int("base.train.max_epochs", raw.get("max_epochs", 10), 1),
            seed=_int("base.train.seed", raw.get("seed", 0)),
            optimizer=_class_spec("base.train.optimizer", raw.get("optimizer")),
            lr_scheduler=_class_spec("base.train.lr_scheduler", raw.get("lr_scheduler")),
            data=_mapping("base.train.data", raw.get("data", {"classes": None})),
            trainer=_mapping("base.train.trainer", raw.get("trainer")),
        )
    elif not isinstance(checkpoint, str):
        raise ConfigError("base.checkpoint must be a file path or a torchvision weights name")
    elif "train" in data:
        raise ConfigError("base: give either checkpoint or train, not both")
    return BaseSpec(
        network=data["network"],
        small_input=bool(data.get("small_input", False)),
        num_classes=num_classes,
        checkpoint=checkpoint,
        train=train,
        trust_weights=trust,
    )


def _grid(value: Any, default_classes: Any) -> GridSpec:
    data = _check_keys(
        "grid",
        value,
        ("criteria", "ratios", "scopes", "targets", "classes", "seeds", "retrain_epochs"),
        ("criteria",),
    )
    criteria = [
        _criterion(f"grid.criteria[{i}]", c)
        for i, c in enumerate(_list("grid.criteria", data["criteria"]))
    ]
    labels = [c.label for c in criteria]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(
            f"grid.criteria: {dup} appear more than once: give each a distinct name: (point ids "
            "use it)"
        )
    if "ratios" not in data and any(c.ratios is None for c in criteria):
        raise ConfigError("grid.ratios is required unless every criterion has its own ratios")
    classes = data.get("classes", [default_classes])
    return GridSpec(
        criteria=criteria,
        ratios=_ratios("grid.ratios", data["ratios"]) if "ratios" in data else [],
        scopes=_scopes("grid.scopes", data.get("scopes", ["global"])),
        targets=_targets("grid.targets", data.get("targets", [None])),
        classes=[
            _classes(f"grid.classes[{i}]", c) for i, c in enumerate(_list("grid.classes", classes))
        ],
        seeds=[_int("grid.seeds", s) for s in _list("grid.seeds", data.get("seeds", [0]))],
        retrain_epochs=[
            _int("grid.retrain_epochs", e, 0)
            for e in _list("grid.retrain_epochs", data.get("retrain_epochs", [0]))
        ],
    )


def _retrain(value: Any) -> RetrainSpec:
    data = _check_keys(
        "retrain", value or {}, ("optimizer", "lr_scheduler", "early_stopping_patience", "trainer")
    )
    patience = data.get("early_stopping_patience")
    return RetrainSpec(
        optimizer=_class_spec("retrain.optimizer", data.get("optimizer")),
        lr_scheduler=_class_spec("retrain.lr_scheduler", data.get("lr_scheduler")),
        early_stopping_patience=None
        if patience is None
        else _int("retrain.early_stopping_patience", patience, 1),
        trainer=_mapping("retrain.trainer", data.get("trainer")),
    )


def parse_sweep_config(raw: Any) -> SweepConfig:
    """Validate a parsed sweep YAML and return its typed form.

    Args:
        raw: The YAML document (a mapping).

    Raises:
        ConfigError: One line naming the offending key and what is valid.
    """
    data = _check_keys(
        "the sweep file",
        raw,
        ("name", "base", "data", "grid", "pruning", "retrain", "benchmark", "trainer"),
        ("base", "data", "grid"),
    )
    data_section = _data(data["data"])
    default_classes = _classes("data.init_args.classes", data_section["init_args"].get("classes"))
    return SweepConfig(
        name=str(data.get("name", "sweep")),
        base=_base(data["base"]),
        data=data_section,
        grid=_grid(data["grid"], default_classes),
        pruning=pruning_options(data.get("pruning")),
        retrain=_retrain(data.get("retrain")),
        benchmark=benchmark_options(data.get("benchmark")),
        trainer=_mapping("trainer", data.get("trainer")),
    )


def apply_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """Set ``dotted.key=YAML value`` overrides in a parsed sweep config (``--set``).

    ``grid.ratios=[0.5]`` replaces the list; ``data.init_args.samples_per_class=300`` sets a
    nested key (creating missing mappings). Values are parsed as YAML.

    Raises:
        ConfigError: An override without ``=``, or a key path through a non-mapping.
    """
    raw = copy.deepcopy(raw) if raw is not None else {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set grid.seeds=[0]")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not inside a mapping")
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {parts[-2]!r} is not a mapping")
        node[parts[-1]] = value
    return raw


def load_sweep_config(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read and validate a sweep YAML file, with optional ``--set`` overrides.

    Raises:
        ConfigError: Missing file, invalid YAML or invalid settings (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep config {str(path)!r} not found: pass --config FILE.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{path}: invalid YAML: {first}") from None
    if overrides:
        raw = apply_overrides(raw, overrides)
    try:
        return parse_sweep_config(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# --------------------------------------------------------------------------------------------
# The grid


def _ratio_label(ratio: float) -> str:
    text = f"{ratio:.4f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _classes_label(classes: Any) -> str:
    if classes is None:
        return "all"
    if isinstance(classes, str):
        text = classes
    else:
        text = "_".join(str(c) for c in classes)
    safe = "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in text)
    if len(safe) > 32 or safe != text:  # long or lossy: keep it readable and unique
        head = safe[:16].rstrip("_")
        count = f"{len(classes)}x" if isinstance(classes, list) else ""
        safe = f"{head}_{count}{stable_hash(classes, 6)}"
    return safe


def make_point_id(
    label: str, scope: str, target: str | None, ratio: float, classes: Any, seed: int, epochs: int
) -> str:
    """The readable, deterministic id of a point, e.g. ``ocap-global-macs-r0.50-c3_5_8-s0-e0``."""
    return (
        f"{label}-{scope}-{target or 'none'}-r{_ratio_label(ratio)}-c{_classes_label(classes)}"
        f"-s{seed}-e{epochs}"
    )


def _data_free_deterministic(spec: CriterionSpec) -> bool:
    try:
        cls = spec.criterion_class()
    except (ImportError, AttributeError):
        return False
    return not getattr(cls, "requires_data", True) and spec.class_name != "Random"


def expand_grid(config: SweepConfig) -> tuple[list[Point], list[Skipped]]:
    """All runnable points in a fixed order (their ``index``), and the combinations left out.

    Left out, with the reason recorded:

    * ratio 0 prunes nothing, so every criterion, scope and target gives the same network: one
      point per class subset, seed and retraining length is kept (the first criterion's).
    * a data-free deterministic criterion (Magnitude, L1Norm, BNScale, ...) without retraining
      does not depend on the seed: only the first seed is run.

    Magnitude-type (weight / kernel granularity) criteria run with both scopes and all targets.
    """
    grid = config.grid
    points: list[Point] = []
    skipped: list[Skipped] = []
    seen_zero: dict[tuple, str] = {}
    for spec in grid.criteria:
        data_free = _data_free_deterministic(spec)
        combos = itertools.product(
            grid.classes,
            spec.seeds or grid.seeds,
            grid.retrain_epochs,
            spec.scopes or grid.scopes,
            spec.targets or grid.targets,
            spec.ratios or grid.ratios,
        )
        for classes, seed, epochs, scope, target, ratio in combos:
            pid = make_point_id(spec.label, scope, target, ratio, classes, seed, epochs)
            if data_free and epochs == 0 and seed != grid.seeds[0]:
                skipped.append(
                    Skipped(
                        pid,
                        f"{spec.class_name} is data-free and deterministic: without retraining "
                        f"the seed changes nothing (seed {grid.seeds[0]} is run)",
                    )
                )
                continue
            if ratio == 0.0:
                key = (json.dumps(classes), seed, epochs)
                if key in seen_zero:
                    reason = f"ratio 0 prunes nothing: same as {seen_zero[key]}"
                    skipped.append(Skipped(pid, reason))
                    continue
                seen_zero[key] = pid
            points.append(
                Point(
                    index=len(points),
                    point_id=pid,
                    criterion=spec,
                    ratio=ratio,
                    scope=scope,
                    target=target,
                    classes=classes,
                    seed=seed,
                    retrain_epochs=epochs,
                )
            )
    ids = [p.point_id for p in points]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"grid gives point {dup} twice: remove the repeated list entry")
    return points, skipped
