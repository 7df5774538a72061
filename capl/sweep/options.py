"""A sweep's ``pruning:`` and ``benchmark:`` sections: the callbacks' own ``init_args``.

One schema per set of options: the sections are validated against the signatures of
:class:`~capl.callbacks.PruningCallback` and :class:`~capl.callbacks.BenchmarkCallback` by
jsonargparse (types), then by the callbacks' own ``__init__`` (values), so a sweep accepts
exactly what a single run accepts. The keys a grid point sets itself are refused here.
"""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser

from capl.callbacks import BenchmarkCallback, PruningCallback
from capl.criteria import L1Norm
from capl.errors import ConfigError

__all__ = ["POINT_BENCHMARK_KEYS", "POINT_PRUNING_KEYS", "benchmark_options", "pruning_options"]

#: PruningCallback arguments every point sets from the grid (or the sweep's folders).
POINT_PRUNING_KEYS = ("criterion", "ratio", "scope", "target", "score_cache")
#: BenchmarkCallback arguments every point sets itself.
POINT_BENCHMARK_KEYS = ("output", "run_name")

_GRID_HINT = {
    "criterion": "grid.criteria",
    "ratio": "grid.ratios",
    "scope": "grid.scopes",
    "target": "grid.targets",
}


def _validated(section: str, value: Any, callback: type, owned: tuple[str, ...]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{section} must be a mapping of {callback.__name__} options")
    clash = [k for k in value if k in owned]
    if clash:
        where = _GRID_HINT.get(clash[0])
        hint = f"list it under {where}" if where else "the sweep sets it for every point"
        raise ConfigError(f"{section}.{clash[0]} is set per point: remove it ({hint})")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(callback, skip=set(owned))
    try:
        parser.parse_object(value)
    except Exception as err:  # jsonargparse's ArgumentError: several lines, keep the first two
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise ConfigError(f"{section}: {' '.join(lines[:2])}") from None
    return dict(value)


def pruning_options(value: Any) -> dict[str, Any]:
    """Validate a sweep's ``pruning:`` section (PruningCallback options but the grid's).

    Raises:
        ConfigError: An unknown key, a wrong type, a bad value or a key the grid owns.
    """
    options = _validated("pruning", value, PruningCallback, POINT_PRUNING_KEYS)
    try:  # values: the callback's own eager checks, with a stand-in for the grid's part
        PruningCallback(L1Norm(), ratio=0.5, **options)
    except ConfigError as err:
        raise ConfigError(f"pruning: {err}") from None
    return options


def benchmark_options(value: Any) -> dict[str, Any]:
    """Validate a sweep's ``benchmark:`` section (BenchmarkCallback options but output/name).

    Raises:
        ConfigError: An unknown key, a wrong type, a bad value or a key the sweep owns.
    """
    options = _validated("benchmark", value, BenchmarkCallback, POINT_BENCHMARK_KEYS)
    try:
        BenchmarkCallback(**options)
    except ConfigError as err:
        raise ConfigError(f"benchmark: {err}") from None
    return options
