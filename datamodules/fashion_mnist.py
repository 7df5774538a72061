"""FashionMNIST class subsets, read from the raw idx files as torchvision lays them out."""

from __future__ import annotations

import os

import numpy as np
from torchvision.datasets import FashionMNIST

from capl.errors import ConfigError

from .base import ClassSubsetDataModule, LoadedSplit, TensorImageSource

__all__ = ["FashionMNISTSubset"]

_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class FashionMNISTSubset(ClassSubsetDataModule):
    """Class subsets of FashionMNIST (70,000 28x28 grayscale images of clothing, 10 classes).

    Expects ``<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (the
    uncompressed idx files), read through :class:`torchvision.datasets.FashionMNIST`.
    Grayscale is replicated to three channels. Augmentation: random crop with padding and
    horizontal flip (a mirrored garment is the same garment).

    Args:
        root: Folder containing ``FashionMNIST/raw``.
        classes: Classes to keep, as indices or names (``"Sneaker"``); ``None`` keeps all.
        batch_size: Images per batch of every loader.
        num_workers: DataLoader worker processes.
        samples_per_class: Cap on training images per class (drawn with ``seed``).
        val_fraction: Fraction of each class's training images held out for validation.
        calibration_samples_per_class: Training images per class in the calibration loader.
        image_size: Side of the square images; ``None`` keeps the native 28.
        augment: Random crop with padding and horizontal flip on training images.
        seed: Seed for the validation split, the cap, the calibration draw and shuffling.
        download: Let torchvision download the dataset into ``root``.
    """

    name = "fashion_mnist"
    title = "FashionMNIST"
    native_size = 28
    mean = (0.2860, 0.2860, 0.2860)
    std = (0.3530, 0.3530, 0.3530)
    allow_flip = True

    @classmethod
    def all_class_names(cls) -> list[str]:
        """The ten FashionMNIST class names, as torchvision names them."""
        return list(FashionMNIST.classes)

    def _download(self) -> None:
        for train in (True, False):
            FashionMNIST(self.root, train=train, download=True)

    def _load_split(self, split: str) -> LoadedSplit:
        raw = os.path.join(self.root, "FashionMNIST", "raw")
        missing = [name for name in _RAW_FILES if not os.path.isfile(os.path.join(raw, name))]
        if missing:
            raise ConfigError(
                f"FashionMNIST not found at {self.root}: expected {raw}/"
                f"{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte (missing {missing[0]}); "
                "pass download: true or fix root"
            )
        try:
            dataset = FashionMNIST(self.root, train=split == "train", download=False)
        except Exception as error:
            raise ConfigError(
                f"FashionMNIST idx files in {raw} are malformed ({type(error).__name__}: "
                f"{error}); delete them and pass download: true"
            ) from error
        images = dataset.data.unsqueeze(1)
        return LoadedSplit(TensorImageSource(images), np.asarray(dataset.targets, np.int64))
