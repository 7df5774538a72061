"""Reading a sweep YAML: eager validation of every section into :mod:`capl.sweep.spec` types.

The file format is documented in :mod:`capl.sweep.grid`. Every problem is reported as a one-line
:class:`~capl.errors.ConfigError` naming the key. The ``pruning:`` and ``benchmark:`` sections are
the callbacks' own ``init_args``, validated against their signatures (:mod:`capl.sweep.options`).
The section readers :func:`parse_base`, :func:`parse_data`, :func:`parse_criterion` and the
generic checks are shared with the sensitivity file (:mod:`capl.sensitivity.config`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from capl.errors import ConfigError
from capl.sweep.options import benchmark_options, pruning_options
from capl.sweep.spec import (
    SCOPES,
    TARGETS,
    BaseSpec,
    CriterionSpec,
    GridSpec,
    RetrainSpec,
    SweepConfig,
    TrainSpec,
)

__all__ = [
    "apply_overrides",
    "as_mapping",
    "check_keys",
    "load_sweep_config",
    "parse_base",
    "parse_criterion",
    "parse_data",
    "parse_ratios",
    "parse_sweep_config",
]


# --------------------------------------------------------------------------------------------
# Generic checks


def check_keys(
    section: str, data: Any, allowed: Sequence[str], required: Sequence[str] = ()
) -> dict:
    """``data`` as a dict, when it is a mapping of allowed keys holding the required ones.

    Raises:
        ConfigError: Not a mapping, an unknown key (the valid ones listed) or a missing one.
    """
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


def as_mapping(where: str, value: Any) -> dict[str, Any]:
    """``value`` as a dict; ``None`` is an empty one.

    Raises:
        ConfigError: Neither a mapping nor ``None``.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return dict(value)


def _class_spec(where: str, value: Any) -> dict[str, Any] | None:
    """An optimizer / scheduler ``class_path``/``init_args`` mapping (or null)."""
    if value is None:
        return None
    data = check_keys(where, value, ("class_path", "init_args"), ("class_path",))
    if not isinstance(data["class_path"], str):
        raise ConfigError(f"{where}.class_path must be a string")
    return {
        "class_path": data["class_path"],
        "init_args": as_mapping(f"{where}.init_args", data.get("init_args")),
    }


# --------------------------------------------------------------------------------------------
# Grid lists and criteria


def parse_ratios(where: str, value: Any) -> list[float]:
    """A ratio or list of ratios, each a fraction in [0, 1).

    Raises:
        ConfigError: A value that is not such a fraction.
    """
    out = []
    for r in _list(where, value):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
            raise ConfigError(f"{where}: ratio {r!r} is not a fraction in [0, 1)")
        out.append(float(r))
    return out


def _scopes(where: str, value: Any) -> list[str]:
    out = _list(where, value)
    bad = [s for s in out if s not in SCOPES]
    if bad:
        raise ConfigError(f"{where}: unknown scope(s) {bad}: choose {' and/or '.join(SCOPES)}")
    return out


def _targets(where: str, value: Any) -> list[str | None]:
    out = _list(where, value)
    bad = [t for t in out if t not in TARGETS]
    if bad:
        names = ", ".join("null" if t is None else t for t in TARGETS[:-1])
        raise ConfigError(f"{where}: unknown target(s) {bad}: choose {names} and/or {TARGETS[-1]}")
    return out


def _criterion_path(where: str, path: Any) -> str:
    """A criterion's full class path: a capl short name (any case) or a Criterion subclass."""
    from capl.criteria import available_criteria

    registry = available_criteria()
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}.class_path must be a criterion name or dotted path")
    short = path.rsplit(".", 1)[-1]
    by_lower = {k.lower(): k for k in registry}
    if "." not in path or path.startswith("capl.criteria."):
        if short.lower() not in by_lower:
            raise ConfigError(
                f"{where}: unknown criterion {path!r}: choose one of {', '.join(sorted(registry))}"
            )
        return f"capl.criteria.{by_lower[short.lower()]}"
    # only a Criterion subclass may be built from a config (never subprocess.run)
    from capl.criteria import Criterion
    from capl.sweep.preflight import import_class

    import_class(path, Criterion, where)
    return path


def parse_criterion(where: str, value: Any) -> CriterionSpec:
    """A criterion entry: a short name, or ``class_path``/``init_args`` (+ name, grid overrides).

    Raises:
        ConfigError: An unknown criterion, a class that is not a Criterion, a bad key or value.
    """
    if isinstance(value, str):
        value = {"class_path": value}
    data = check_keys(
        where,
        value,
        ("class_path", "init_args", "name", "ratios", "scopes", "targets", "seeds"),
        ("class_path",),
    )
    path = _criterion_path(where, data["class_path"])
    init_args = as_mapping(f"{where}.init_args", data.get("init_args"))
    label = data.get("name") or path.rsplit(".", 1)[-1].lower()
    if not isinstance(label, str) or not label.replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"{where}.name must be letters, digits, '_' or '.', got {label!r}")
    return CriterionSpec(
        class_path=path,
        init_args=init_args,
        label=label,
        ratios=parse_ratios(f"{where}.ratios", data["ratios"]) if "ratios" in data else None,
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


def _grid(value: Any, default_classes: Any) -> GridSpec:
    data = check_keys(
        "grid",
        value,
        ("criteria", "ratios", "scopes", "targets", "classes", "seeds", "retrain_epochs"),
        ("criteria",),
    )
    criteria = [
        parse_criterion(f"grid.criteria[{i}]", c)
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
        ratios=parse_ratios("grid.ratios", data["ratios"]) if "ratios" in data else [],
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


# --------------------------------------------------------------------------------------------
# Data, base model, retraining


def parse_data(value: Any) -> dict[str, Any]:
    """The ``data:`` section: a capl DataModule name or a ClassSubsetDataModule subclass path.

    Raises:
        ConfigError: An unknown DataModule, a class of another kind or a bad key.
    """
    data = check_keys("data", value, ("class_path", "init_args"), ("class_path",))
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
    return {"class_path": path, "init_args": as_mapping("data.init_args", data.get("init_args"))}


def _train(value: Any) -> TrainSpec:
    raw = check_keys(
        "base.train",
        value or {},
        ("max_epochs", "seed", "optimizer", "lr_scheduler", "data", "trainer"),
    )
    return TrainSpec(
        max_epochs=_int("base.train.max_epochs", raw.get("max_epochs", 10), 1),
        seed=_int("base.train.seed", raw.get("seed", 0)),
        optimizer=_class_spec("base.train.optimizer", raw.get("optimizer")),
        lr_scheduler=_class_spec("base.train.lr_scheduler", raw.get("lr_scheduler")),
        data=as_mapping("base.train.data", raw.get("data", {"classes": None})),
        trainer=as_mapping("base.train.trainer", raw.get("trainer")),
    )


def parse_base(value: Any) -> BaseSpec:
    """The ``base:`` section: a supported network and either a checkpoint or how to train it.

    Raises:
        ConfigError: An unknown network, a bad value, or both checkpoint and train.
    """
    from capl.models import SUPPORTED_NETWORKS

    data = check_keys(
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
        train = _train(data.get("train"))
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


def _retrain(value: Any) -> RetrainSpec:
    data = check_keys(
        "retrain", value or {}, ("optimizer", "lr_scheduler", "early_stopping_patience", "trainer")
    )
    patience = data.get("early_stopping_patience")
    return RetrainSpec(
        optimizer=_class_spec("retrain.optimizer", data.get("optimizer")),
        lr_scheduler=_class_spec("retrain.lr_scheduler", data.get("lr_scheduler")),
        early_stopping_patience=None
        if patience is None
        else _int("retrain.early_stopping_patience", patience, 1),
        trainer=as_mapping("retrain.trainer", data.get("trainer")),
    )


# --------------------------------------------------------------------------------------------
# The whole file


def parse_sweep_config(raw: Any) -> SweepConfig:
    """Validate a parsed sweep YAML and return its typed form.

    Args:
        raw: The YAML document (a mapping).

    Raises:
        ConfigError: One line naming the offending key and what is valid.
    """
    data = check_keys(
        "the sweep file",
        raw,
        ("name", "base", "data", "grid", "pruning", "retrain", "benchmark", "trainer"),
        ("base", "data", "grid"),
    )
    data_section = parse_data(data["data"])
    default_classes = _classes("data.init_args.classes", data_section["init_args"].get("classes"))
    return SweepConfig(
        name=str(data.get("name", "sweep")),
        base=parse_base(data["base"]),
        data=data_section,
        grid=_grid(data["grid"], default_classes),
        pruning=pruning_options(data.get("pruning")),
        retrain=_retrain(data.get("retrain")),
        benchmark=benchmark_options(data.get("benchmark")),
        trainer=as_mapping("trainer", data.get("trainer")),
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
