"""German Traffic Sign Recognition Benchmark (GTSRB) class subsets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torchvision.datasets import GTSRB
from torchvision.transforms import v2

from capl.errors import ConfigError

from .base import ClassSubsetDataModule, DatasetImageSource, LoadedSplit

__all__ = ["GTSRB_CLASSES", "GTSRBSubset"]

#: The 43 sign classes by ClassId (names as in the benchmark's sign-name table).
GTSRB_CLASSES = [
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]


class GTSRBSubset(ClassSubsetDataModule):
    """Class subsets of GTSRB (about 51,800 traffic-sign photos of varying size, 43 classes).

    Expects torchvision's layout, read through :class:`torchvision.datasets.GTSRB`:
    ``<root>/gtsrb/GTSRB/Training/<00000..00042>/*.ppm`` for training and
    ``<root>/gtsrb/GTSRB/Final_Test/Images/*.ppm`` with ``<root>/gtsrb/GT-final_test.csv``
    for the test set. Images are resized to ``image_size`` squares. Augmentation pads and
    crops but never flips (a mirrored "Turn left" sign means "Turn right").

    Args:
        root: Folder containing ``gtsrb``.
        classes: Classes to keep, as ClassIds or sign names (``"Stop"``); ``None`` keeps all.
        batch_size: Images per batch of every loader.
        num_workers: DataLoader worker processes.
        samples_per_class: Cap on training images per class (drawn with ``seed``).
        val_fraction: Fraction of each class's training images held out for validation.
        calibration_samples_per_class: Training images per class in the calibration loader.
        image_size: Side of the square images; ``None`` gives 32.
        augment: Random crop with padding on training images.
        seed: Seed for the validation split, the cap, the calibration draw and shuffling.
        download: Let torchvision download the dataset into ``root``.
    """

    name = "gtsrb"
    title = "GTSRB"
    native_size = 32
    mean = (0.3403, 0.3121, 0.3214)
    std = (0.2724, 0.2608, 0.2669)
    allow_flip = False

    @classmethod
    def all_class_names(cls) -> list[str]:
        """The 43 sign names by ClassId."""
        return list(GTSRB_CLASSES)

    def _geometry(self, train: bool) -> list[Callable[[Any], Any]]:
        # Photos come in many sizes, so always resize, even to the "native" 32.
        size = self.image_size
        steps: list[Callable[[Any], Any]] = [v2.Resize((size, size), antialias=True)]
        if train and self.augment:
            steps.append(v2.RandomCrop(size, padding=max(1, size // 8)))
        return steps

    def _download(self) -> None:
        for split in ("train", "test"):
            GTSRB(self.root, split=split, download=True)

    def _load_split(self, split: str) -> LoadedSplit:
        base = os.path.join(self.root, "gtsrb")
        if split == "train":
            folder = os.path.join(base, "GTSRB", "Training")
            if not os.path.isdir(folder):
                raise ConfigError(
                    f"GTSRB not found at {self.root}: expected {folder}/<00000..00042>/*.ppm; "
                    "pass download: true or fix root"
                )
        else:
            folder = os.path.join(base, "GTSRB", "Final_Test", "Images")
            csv_path = os.path.join(base, "GT-final_test.csv")
            if not os.path.isdir(folder) or not os.path.isfile(csv_path):
                raise ConfigError(
                    f"GTSRB test set not found at {self.root}: expected {folder}/*.ppm and "
                    f"{csv_path}; pass download: true or fix root"
                )
        try:
            dataset = GTSRB(self.root, split=split, download=False)
        except Exception as error:
            raise ConfigError(
                f"GTSRB {split} split at {base} is malformed ({type(error).__name__}: {error}); "
                "re-download it with download: true"
            ) from error
        # GTSRB has no public targets; its (path, target) pairs are the only label source.
        samples: list[tuple[str, int]] = dataset._samples
        if split == "train":
            labels = [self._class_of_folder(path) for path, _ in samples]
        else:
            labels = [target for _, target in samples]
        if not samples:
            raise ConfigError(
                f"GTSRB {split} split at {folder} holds no .ppm images; re-download it with "
                "download: true"
            )
        return LoadedSplit(DatasetImageSource(dataset), np.asarray(labels, dtype=np.int64))

    def _class_of_folder(self, path: str) -> int:
        # torchvision numbers the class folders it finds 0..n-1, which is the ClassId only when
        # all 43 are present; the folder name is the ClassId in every case.
        folder = Path(path).parent.name
        if not folder.isdigit():
            raise ConfigError(
                f"GTSRB training image {path} is not in a numbered class folder "
                "(expected gtsrb/GTSRB/Training/<00000..00042>/); fix the layout"
            )
        return int(folder)
