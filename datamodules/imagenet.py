"""ImageNet (ILSVRC-2012) class subsets from class-folder layouts."""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from capl.errors import ConfigError

from .base import ClassSubsetDataModule, DatasetImageSource, LoadedSplit

__all__ = ["IMAGENET_SUBSETS", "ImageNetSubset", "imagenet_classes"]

#: Predefined 10-class subsets, as WNIDs: ten kinds of boat, and ten unrelated classes.
IMAGENET_SUBSETS: dict[str, list[int | str]] = {
    "similar": [
        "n03947888",
        "n03673027",
        "n02981792",
        "n03447447",
        "n03662601",
        "n04273569",
        "n02951358",
        "n04147183",
        "n03344393",
        "n04483307",
    ],
    "distinct": [
        "n11939491",
        "n02980441",
        "n04266014",
        "n07583066",
        "n01910747",
        "n02666196",
        "n09193705",
        "n01704323",
        "n02056570",
        "n06359193",
    ],
}


@functools.cache
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The 1000 ImageNet classes in the standard index order.

    Returns:
        ``(wnids, names)``: the WNIDs in sorted order (index = position) and the class names
        torchvision's pretrained weights use.
    """
    text = resources.files("capl.datamodules").joinpath("imagenet_classes.tsv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    wnids = tuple(row["wnid"] for row in rows)
    names = tuple(row["name"] for row in rows)
    if len(wnids) != 1000 or [int(row["index"]) for row in rows] != list(range(1000)):
        raise RuntimeError("capl.datamodules/imagenet_classes.tsv is corrupt: reinstall capl")
    return wnids, names


class _SelectedImageFolder(ImageFolder):
    """An ImageFolder that scans only the selected class folders.

    Targets are the standard ImageNet indices (sorted WNID order), so a folder holding only
    a few classes still yields the labels of the 1000-class index.
    """

    def __init__(self, root: str, wnids: dict[str, int]) -> None:
        self._selected = dict(wnids)
        super().__init__(root)

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        """Return the selected WNIDs and their standard indices."""
        return sorted(self._selected), dict(self._selected)


class ImageNetSubset(ClassSubsetDataModule):
    """Class subsets of ImageNet (ILSVRC-2012, 1000 classes).

    Expects class folders ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG``
    (the validation set sorted into class folders); only the selected classes' folders are
    read, through torchvision's ImageFolder loader. Class indices are the standard 1000-class
    ones (position of the WNID in sorted order), whatever folders are present. The official
    validation set serves as the test set; validation is carved from the training images.
    Classes may be given as indices, WNIDs, class names, or one of the named subsets
    ``"similar"`` (ten boats) and ``"distinct"`` (ten unrelated classes).

    Training images: RandomResizedCrop and horizontal flip when ``augment``, else Resize
    and CenterCrop like the evaluation images.

    Args:
        root: Folder containing ``train`` and ``val``.
        classes: Classes to keep (indices, WNIDs, names, or ``"similar"``/``"distinct"``);
            ``None`` keeps all 1000.
        batch_size: Images per batch of every loader.
        num_workers: DataLoader worker processes.
        samples_per_class: Cap on training images per class (drawn with ``seed``).
        val_fraction: Fraction of each class's training images held out for validation.
        calibration_samples_per_class: Training images per class in the calibration loader.
        image_size: Side of the square crops; ``None`` gives 224.
        augment: RandomResizedCrop and horizontal flip on training images.
        seed: Seed for the validation split, the cap, the calibration draw and shuffling.
        download: Must be false: ImageNet cannot be downloaded automatically.
        test_samples_per_class: Cap on test images per class (fixed draw, any seed).
    """

    name = "imagenet"
    title = "ImageNet"
    native_size = 224
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    allow_flip = True
    named_subsets = IMAGENET_SUBSETS
    download_refusal = (
        "ImageNet cannot be downloaded automatically (its licence requires a manual "
        "download); set download: false and point root at <root>/train/<wnid>/*.JPEG "
        "and <root>/val/<wnid>/*.JPEG"
    )

    @classmethod
    def all_class_names(cls) -> list[str]:
        """The 1000 class names (torchvision's) by standard index."""
        return list(imagenet_classes()[1])

    @property
    def wnids(self) -> list[str]:
        """WNIDs of the selected classes, in the order of ``class_indices``."""
        all_wnids = imagenet_classes()[0]
        return [all_wnids[i] for i in self.class_indices]

    def class_aliases(self) -> dict[str, int]:
        """WNIDs, accepted in ``classes`` like names."""
        return {wnid: i for i, wnid in enumerate(imagenet_classes()[0])}

    def _unknown_class_hint(self) -> str:
        return (
            "1000 classes: an index 0..999, a WNID such as n01440764, a name such as 'tench', "
            "or 'similar'/'distinct'"
        )

    def _geometry(self, train: bool) -> list[Callable[[Any], Any]]:
        size = self.image_size
        if train and self.augment:
            return [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        return [v2.Resize(int(size * 256 / 224), antialias=True), v2.CenterCrop(size)]

    def _load_split(self, split: str) -> LoadedSplit:
        folder = os.path.join(self.root, "train" if split == "train" else "val")
        if not os.path.isdir(folder):
            raise ConfigError(
                f"ImageNet not found at {self.root}: expected {self.root}/train/<wnid>/*.JPEG "
                f"and {self.root}/val/<wnid>/*.JPEG (missing {folder}); fix root"
            )
        selected = dict(zip(self.wnids, self.class_indices))
        missing = [w for w in selected if not os.path.isdir(os.path.join(folder, w))]
        if missing:
            raise ConfigError(
                f"ImageNet class folder {os.path.join(folder, missing[0])} not found "
                f"({len(missing)} of the {len(selected)} selected classes missing): expected "
                f"{self.root}/train/<wnid>/*.JPEG and {self.root}/val/<wnid>/*.JPEG; fix root "
                "or classes"
            )
        try:
            dataset = _SelectedImageFolder(folder, selected)
        except FileNotFoundError as error:
            raise ConfigError(
                f"ImageNet at {folder}: a selected class folder holds no images ({error}); "
                "fix root or classes"
            ) from error
        labels = np.asarray(dataset.targets, dtype=np.int64)
        return LoadedSplit(DatasetImageSource(dataset), labels)
