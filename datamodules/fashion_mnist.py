"""FashionMNIST class subsets, read from the idx files (gzipped or not) in place."""

from __future__ import annotations

import gzip
import os

import numpy as np
import torch
from torchvision.datasets import FashionMNIST

from capl.errors import ConfigError

from .base import ClassSubsetDataModule, LoadedSplit, TensorImageSource

__all__ = ["FASHION_MNIST_SUBSETS", "FashionMNISTSubset", "read_idx"]

_PREFIX = {"train": "train", "test": "t10k"}
_KINDS = {"images": "images-idx3-ubyte", "labels": "labels-idx1-ubyte"}
# idx type code 0x08: unsigned byte, the only one Fashion-MNIST uses
_UBYTE = 0x08

# The upper-body garments (the classes a Fashion-MNIST classifier confuses most) against four
# classes that look nothing alike: the "similar" / "distinct" sets of the seed paper's ImageNet
# study, transposed to Fashion-MNIST.
FASHION_MNIST_SUBSETS: dict[str, list[int | str]] = {
    "similar": [0, 2, 4, 6],  # T-shirt/top, Pullover, Coat, Shirt
    "distinct": [1, 3, 7, 8],  # Trouser, Dress, Sneaker, Bag
}


def read_idx(path: str, ndim: int) -> np.ndarray:
    """Read an unsigned-byte idx file (``.gz`` or plain) into an array, without extracting it.

    Args:
        path: The file.
        ndim: Expected number of dimensions (3 for images, 1 for labels).

    Returns:
        A ``uint8`` array of the file's shape.

    Raises:
        ValueError: The header or the payload does not match the idx format.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{len(data)} bytes is shorter than an idx header")
    zero, dtype, dims = data[0] | data[1], data[2], data[3]
    if zero != 0 or dtype != _UBYTE or dims != ndim:
        raise ValueError(f"header says type 0x{dtype:02x} with {dims} dims, expected ubyte/{ndim}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise ValueError(f"payload holds {payload.size} bytes, header promises shape {shape}")
    return payload.reshape(shape)


class FashionMNISTSubset(ClassSubsetDataModule):
    """Class subsets of FashionMNIST (70,000 28x28 grayscale images of clothing, 10 classes).

    Reads the four idx files, gzipped or not, from torchvision's layout
    (``<root>/FashionMNIST/raw/``) or from a flat folder holding them (Debian's
    ``dataset-fashion-mnist`` package: ``root: /usr/share/datasets/fashion-mnist``); nothing is
    extracted. Named subsets: ``similar`` (T-shirt/top, Pullover, Coat, Shirt) and ``distinct``
    (Trouser, Dress, Sneaker, Bag). Grayscale is replicated to three channels. Augmentation:
    random crop with padding and horizontal flip (a mirrored garment is the same garment).

    Args:
        root: Folder holding the idx files, or containing ``FashionMNIST/raw``.
        classes: Classes to keep: indices, names (``"Sneaker"``), ``"similar"`` or
            ``"distinct"``; ``None`` keeps all.
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
    named_subsets = FASHION_MNIST_SUBSETS

    @classmethod
    def all_class_names(cls) -> list[str]:
        """The ten FashionMNIST class names, as torchvision names them."""
        return list(FashionMNIST.classes)

    def _download(self) -> None:
        for train in (True, False):
            FashionMNIST(self.root, train=train, download=True)

    def _find(self, split: str, kind: str) -> str | None:
        name = f"{_PREFIX[split]}-{_KINDS[kind]}"
        for folder in (os.path.join(self.root, "FashionMNIST", "raw"), self.root):
            for candidate in (name, name + ".gz"):
                path = os.path.join(folder, candidate)
                if os.path.isfile(path):
                    return path
        return None

    def _load_split(self, split: str) -> LoadedSplit:
        paths = {kind: self._find(split, kind) for kind in _KINDS}
        missing = [f"{_PREFIX[split]}-{_KINDS[k]}" for k, p in paths.items() if p is None]
        if missing:
            raise ConfigError(
                f"FashionMNIST not found at {self.root}: expected "
                f"{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz] in {self.root}/ (flat, "
                f"as `apt-get install dataset-fashion-mnist` puts them in "
                f"/usr/share/datasets/fashion-mnist) or in {self.root}/FashionMNIST/raw/ "
                f"(torchvision's layout; download: true fetches it) (missing {missing[0]})"
            )
        assert paths["images"] is not None and paths["labels"] is not None
        try:
            images = read_idx(paths["images"], 3)
            labels = read_idx(paths["labels"], 1)
        except (OSError, EOFError, ValueError) as error:
            folder = os.path.dirname(paths["images"])
            raise ConfigError(
                f"FashionMNIST idx files in {folder} are malformed ({type(error).__name__}: "
                f"{error}); reinstall or re-download them"
            ) from error
        tensor = torch.from_numpy(images.copy()).unsqueeze(1)
        return LoadedSplit(TensorImageSource(tensor), labels.astype(np.int64))
