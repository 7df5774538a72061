"""Where a class-subset DataModule's images come from, and the datasets built over them.

A subclass of :class:`~capl.datamodules.base.ClassSubsetDataModule` loads each split of its
dataset as a :class:`LoadedSplit`: an image source (one in-memory tensor, or a map-style
dataset read item by item) and the original class of every image. :func:`subset_dataset`
turns the selected positions of a split into the Dataset a loader reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

__all__ = [
    "DatasetImageSource",
    "ImageSource",
    "LoadedSplit",
    "SubsetImageDataset",
    "TensorImageSource",
    "subset_dataset",
]

# Precomputing a deterministic split as one tensor is much faster than transforming item by
# item, but must not blow up memory (e.g. CIFAR upsampled to 224x224).
_PRECOMPUTE_LIMIT_BYTES = 256 * 2**20
_PRECOMPUTE_CHUNK = 4096


class TensorImageSource:
    """Images held in memory as one tensor.

    Args:
        images: ``[N, C, H, W]`` tensor, ``uint8`` in 0..255 or floating point in [0, 1].
    """

    def __init__(self, images: Tensor) -> None:
        if images.ndim != 4:
            raise ValueError(f"expected images of shape [N, C, H, W], got {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def image(self, index: int) -> Tensor:
        """Return image ``index`` as a ``[C, H, W]`` tensor."""
        return self.images[index]


class DatasetImageSource:
    """Images loaded item by item from a map-style dataset (e.g. a torchvision dataset).

    Args:
        dataset: A dataset whose items are ``(image, target)``; only the image is used, the
            labels come from the DataModule's own label array.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def image(self, index: int) -> Any:
        """Return image ``index`` as the dataset produces it (usually a PIL image)."""
        return self.dataset[index][0]


ImageSource = TensorImageSource | DatasetImageSource


@dataclass
class LoadedSplit:
    """One split of a dataset as a subclass loads it.

    Attributes:
        source: Where the images come from.
        labels: Original class index of every image in ``source`` (``int64``, length N).
    """

    source: ImageSource
    labels: np.ndarray


class SubsetImageDataset(Dataset):
    """Selected images of a source with remapped labels and a per-item transform.

    Args:
        source: Where the images come from.
        indices: Positions in ``source`` that make up this dataset.
        labels: Remapped label (``0..k-1``) of each selected image.
        transform: Applied to each image; returns a float ``[3, H, W]`` tensor.
    """

    def __init__(
        self,
        source: ImageSource,
        indices: np.ndarray,
        labels: np.ndarray,
        transform: Callable[[Any], Tensor],
    ) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.transform(self.source.image(int(self.indices[index])))
        return image, self.labels[index]


def subset_dataset(
    split: LoadedSplit,
    indices: np.ndarray,
    labels: np.ndarray,
    transform: Callable[[Any], Tensor],
    image_shape: tuple[int, int, int],
    random: bool,
) -> Dataset:
    """The images at ``indices`` of ``split`` with their remapped ``labels``.

    An in-memory split with a deterministic ``transform`` is transformed once into one tensor
    when that fits the precompute limit; anything else is transformed item by item.

    Args:
        split: The loaded split.
        indices: Positions in ``split`` to keep.
        labels: Remapped label of each kept image.
        transform: The per-image pipeline.
        image_shape: ``(C, H, W)`` the transform produces.
        random: Whether ``transform`` draws random numbers (augmentation).
    """
    estimate = len(indices) * int(np.prod(image_shape)) * 4
    if isinstance(split.source, TensorImageSource) and not random:
        if estimate <= _PRECOMPUTE_LIMIT_BYTES:
            chunks = [
                transform(split.source.images[indices[i : i + _PRECOMPUTE_CHUNK]])
                for i in range(0, len(indices), _PRECOMPUTE_CHUNK)
            ]
            images = (
                torch.cat(chunks) if chunks else torch.empty((0, *image_shape), dtype=torch.float32)
            )
            return TensorDataset(images, torch.as_tensor(labels, dtype=torch.int64))
    return SubsetImageDataset(split.source, indices, labels, transform)
