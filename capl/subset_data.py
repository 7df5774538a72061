"""What capl's callbacks need of a DataModule, as a Protocol (capl core imports no datamodule).

``capl.datamodules.ClassSubsetDataModule`` provides all of it; any other LightningDataModule
that does can be pruned and benchmarked too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

__all__ = ["SubsetData"]


@runtime_checkable
class SubsetData(Protocol):
    """A DataModule over a subset of a dataset's classes (see "DataModules" in ARCHITECTURE.md).

    Attributes:
        name: Short dataset name (part of the score cache key).
        class_indices: Original indices of the selected classes, in label order.
        class_names: Their names.
        input_shape: ``(C, H, W)`` of one image after the transforms.
        calibration_samples_per_class: Images per class in :meth:`calibration_dataloader`.
        seed: Seed of the splits and draws.
    """

    name: str
    class_indices: list[int]
    class_names: list[str]
    input_shape: tuple[int, int, int]
    calibration_samples_per_class: int
    seed: int

    def train_dataloader(self) -> Iterable[Any]:
        """Training batches ``(images, labels in 0..k-1)``."""
        ...

    def test_dataloader(self) -> Iterable[Any]:
        """Test batches of the selected classes, in a fixed order."""
        ...

    def calibration_dataloader(self) -> Iterable[Any]:
        """A fixed number of training images per selected class, no augmentation."""
        ...
