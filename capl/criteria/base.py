"""The criterion contract: a criterion scores units; the pruner (capl.pruning) decides and removes.

Data-driven criteria split their work in two so that selection can run distributed:
:meth:`Criterion.collect` returns *sums* over the data (two halves summed equal the whole, so ranks
can all-reduce them), and :meth:`Criterion.score` turns the summed statistics into scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

Granularity = Literal["filter", "kernel", "weight"]
Normalization = Literal["none", "l2", "max", "sum"]
Batch = tuple[Tensor, Tensor]

_REGISTRY: dict[str, type[Criterion]] = {}


class Criterion(ABC):
    """Scores prunable units of a network; higher scores mean more important.

    Subclasses set the class attributes and implement :meth:`score` (and :meth:`collect` when they
    need data). Defining a subclass registers it under its class name.

    Attributes:
        granularity: ``"filter"`` scores output channels of Conv2d layers (structured removal);
            ``"kernel"`` scores whole k x k kernels and ``"weight"`` single weights (masks).
        requires_data: Whether :meth:`collect` needs calibration batches.
        class_aware: Whether the statistics depend on the selected classes' targets.
        normalization: Per-layer score normalisation applied before ranking across layers
            (``scope: global``), as the criterion's paper does.
    """

    granularity: ClassVar[Granularity] = "filter"
    requires_data: ClassVar[bool] = False
    class_aware: ClassVar[bool] = False
    normalization: ClassVar[Normalization] = "none"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None):
            _REGISTRY[cls.__name__] = cls

    def collect(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        layers: dict[str, nn.Module],
        target_rows: Sequence[int],
    ) -> dict[str, Tensor]:
        """Accumulate additive statistics over ``batches``.

        Args:
            model: The network; run in eval mode, mode restored afterwards, parameters and buffers
                left untouched.
            batches: ``(images, labels)`` with labels in 0..k-1 (the DataModule's subset labels).
            layers: Layers to gather statistics for, by qualified name.
            target_rows: Logit row of each subset label (``target_rows[label]``), in the head's
                own index space.

        Returns:
            Tensors keyed by name whose element-wise sum over data shards equals the statistics
            of the union. Data-free criteria return an empty dict.
        """
        return {}

    @abstractmethod
    def score(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Turn (summed) statistics into scores.

        Returns:
            Per layer name: a 1-D tensor over output channels (``filter``) or a tensor shaped like
            the weight (``weight``) or like its first two dims (``kernel``).
        """

    def settings(self) -> dict[str, Any]:
        """The criterion's name and init settings, for plans and reports."""
        public = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"name": type(self).__name__, **public}


def available_criteria() -> dict[str, type[Criterion]]:
    """All registered criteria by class name."""
    return dict(_REGISTRY)


def get_criterion(name: str, **kwargs: Any) -> Criterion:
    """Build a registered criterion by its class name (case-insensitive)."""
    from capl.errors import ConfigError

    by_lower = {k.lower(): v for k, v in _REGISTRY.items()}
    if name.lower() not in by_lower:
        raise ConfigError(
            f"unknown criterion {name!r}: choose one of {', '.join(sorted(_REGISTRY))}"
        )
    return by_lower[name.lower()](**kwargs)


def run_in_eval(model: nn.Module) -> _EvalMode:
    """Context manager: eval mode inside, the model's previous modes restored on exit."""
    return _EvalMode(model)


class _EvalMode:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for module, training in self.modes:
            module.training = training
