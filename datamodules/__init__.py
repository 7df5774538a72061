"""Class-subset LightningDataModules.

Every DataModule here selects some classes of a dataset, remaps their labels to ``0..k-1`` in
the order given, carves a seeded stratified validation split from the training images, and
offers a deterministic ``calibration_dataloader()`` for data-driven pruning criteria. All of
them produce 3-channel float images, so every torchvision model applies.

- :class:`DigitsSubset`: scikit-learn's bundled 8x8 digits; needs no download (the default).
- :class:`CIFAR10Subset`, :class:`CIFAR100Subset`: torchvision's python-pickle batches.
- :class:`FashionMNISTSubset`: the raw idx files.
- :class:`GTSRBSubset`: German traffic signs in torchvision's GTSRB layout.
- :class:`ImageNetSubset`: ImageNet class folders, standard 1000-class indices, and the
  named subsets ``"similar"`` and ``"distinct"``.

Example:
    >>> from capl.datamodules import DigitsSubset
    >>> dm = DigitsSubset(classes=[3, 5, 7])
    >>> dm.num_classes, dm.input_shape
    (3, (3, 8, 8))
"""

from .base import ClassSubsetDataModule
from .cifar import CIFAR10Subset, CIFAR100Subset
from .digits import DigitsSubset
from .fashion_mnist import FashionMNISTSubset
from .gtsrb import GTSRBSubset
from .imagenet import IMAGENET_SUBSETS, ImageNetSubset, imagenet_classes

__all__ = [
    "IMAGENET_SUBSETS",
    "CIFAR10Subset",
    "CIFAR100Subset",
    "ClassSubsetDataModule",
    "DigitsSubset",
    "FashionMNISTSubset",
    "GTSRBSubset",
    "ImageNetSubset",
    "imagenet_classes",
]
