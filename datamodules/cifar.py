"""CIFAR-10 and CIFAR-100 class subsets, read from torchvision's python-pickle batches."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from capl.errors import ConfigError

from .base import ClassSubsetDataModule, LoadedSplit, TensorImageSource

log = logging.getLogger(__name__)

__all__ = ["CIFAR10Subset", "CIFAR100Subset"]

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

# The fine label names in the order of CIFAR-100's ``meta`` file (alphabetical).
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house "
    "kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle "
    "mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark "
    "shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm"
).split()


class CIFAR10Subset(ClassSubsetDataModule):
    """Class subsets of CIFAR-10 (60,000 32x32 colour images, 10 classes).

    Expects torchvision's layout, ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch,
    batches.meta}``, read through :class:`torchvision.datasets.CIFAR10` (which verifies the
    files' MD5 sums). Images are kept in memory as ``uint8`` tensors. Augmentation: random
    crop with 4-pixel padding (at 32x32) and horizontal flip.

    Args:
        root: Folder containing ``cifar-10-batches-py``.
        classes: Classes to keep, as indices or names (``"cat"``); ``None`` keeps all.
        batch_size: Images per batch of every loader.
        num_workers: DataLoader worker processes.
        samples_per_class: Cap on training images per class (drawn with ``seed``).
        val_fraction: Fraction of each class's training images held out for validation.
        calibration_samples_per_class: Training images per class in the calibration loader.
        image_size: Side of the square images; ``None`` keeps the native 32.
        augment: Random crop with padding and horizontal flip on training images.
        seed: Seed for the validation split, the cap, the calibration draw and shuffling.
        download: Let torchvision download the dataset into ``root``.
    """

    name = "cifar10"
    title = "CIFAR-10"
    native_size = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    allow_flip = True
    dataset_class: type[CIFAR10] = CIFAR10
    download_hint = "pass download: true or fix root"

    @classmethod
    def all_class_names(cls) -> list[str]:
        """The ten CIFAR-10 class names."""
        return list(CIFAR10_CLASSES)

    def _expected_files(self) -> list[str]:
        cls = self.dataset_class
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [os.path.join(self.root, cls.base_folder, name) for name in names]

    def _layout(self) -> str:
        cls = self.dataset_class
        folder = os.path.join(self.root, cls.base_folder)
        train = [name for name, _ in cls.train_list]
        train_text = train[0] if len(train) == 1 else f"{train[0][:-1]}1..{len(train)}"
        tests = ", ".join(name for name, _ in cls.test_list)
        return f"{folder}/{train_text}, {tests} and {cls.meta['filename']}"

    def _download(self) -> None:
        for train in (True, False):
            self.dataset_class(self.root, train=train, download=True)

    def _load_split(self, split: str) -> LoadedSplit:
        missing = [path for path in self._expected_files() if not os.path.isfile(path)]
        if missing:
            raise ConfigError(
                f"{self.title} not found at {self.root}: expected {self._layout()} "
                f"(missing {missing[0]}); {self.download_hint}"
            )
        try:
            dataset = self.dataset_class(self.root, train=split == "train", download=False)
        except RuntimeError as error:
            raise ConfigError(
                f"{self.title} at {self.root} failed torchvision's integrity check ({error}); "
                f"delete {os.path.join(self.root, self.dataset_class.base_folder)} and pass "
                "download: true"
            ) from error
        except Exception as error:
            raise ConfigError(
                f"{self.title} at {self.root} is malformed ({type(error).__name__}: {error}); "
                "re-download it with download: true"
            ) from error
        if list(dataset.classes) != self.all_class_names():
            log.warning(
                "%s at %s lists class names %s, expected %s; using the standard names",
                self.title,
                self.root,
                dataset.classes,
                self.all_class_names(),
            )
        images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
        labels = np.asarray(dataset.targets, dtype=np.int64)
        return LoadedSplit(TensorImageSource(images), labels)


class CIFAR100Subset(CIFAR10Subset):
    """Class subsets of CIFAR-100 (60,000 32x32 colour images, 100 fine classes).

    Expects ``<root>/cifar-100-python/{train, test, meta}``, read through
    :class:`torchvision.datasets.CIFAR100`; labels are the fine labels. Otherwise as
    :class:`CIFAR10Subset`.

    Args:
        root: Folder containing ``cifar-100-python``.
        classes: Classes to keep, as indices or fine label names (``"maple_tree"``); ``None``
            keeps all.
        batch_size: Images per batch of every loader.
        num_workers: DataLoader worker processes.
        samples_per_class: Cap on training images per class (drawn with ``seed``).
        val_fraction: Fraction of each class's training images held out for validation.
        calibration_samples_per_class: Training images per class in the calibration loader.
        image_size: Side of the square images; ``None`` keeps the native 32.
        augment: Random crop with padding and horizontal flip on training images.
        seed: Seed for the validation split, the cap, the calibration draw and shuffling.
        download: Let torchvision download the dataset into ``root``.
    """

    name = "cifar100"
    title = "CIFAR-100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    dataset_class = CIFAR100

    @classmethod
    def all_class_names(cls) -> list[str]:
        """The hundred CIFAR-100 fine label names."""
        return list(CIFAR100_CLASSES)
