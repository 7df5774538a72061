"""Handwritten digits bundled with scikit-learn: the embedded default that needs no download."""

from __future__ import annotations

import functools

import numpy as np
import torch

from .base import ClassSubsetDataModule, LoadedSplit, TensorImageSource

__all__ = ["DigitsSubset"]

#: Fraction of each class held out as the fixed test split.
TEST_FRACTION = 0.2
# A constant, not ``seed``: the test set must be the same whatever seed a run uses, so that
# accuracies from different seeds are measured on the same images.
_TEST_SPLIT_SEED = 20_240_601


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    return images, np.asarray(bunch.target, dtype=np.int64)


@functools.cache
def _test_mask() -> np.ndarray:
    _, labels = _digits()
    mask = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        positions = np.flatnonzero(labels == digit)
        rng = np.random.default_rng([_TEST_SPLIT_SEED, digit])
        n_test = round(TEST_FRACTION * len(positions))
        mask[rng.choice(positions, size=n_test, replace=False)] = True
    return mask


class DigitsSubset(ClassSubsetDataModule):
    """Class subsets of scikit-learn's handwritten digits (1,797 8x8 grayscale images).

    The data ships with scikit-learn, so nothing is downloaded and ``root`` is unused. The
    set has no official test split: a fixed, stratified 20% of each digit (chosen with a
    constant seed, independent of ``seed``) is the test set; validation is carved from the
    remaining 80% with ``seed``. Pixel values 0..16 are scaled to [0, 1], replicated to three
    channels and normalised. Images are held in memory as tensors, so loaders are fast.
    Augmentation pads and crops but never flips (a flipped digit may be another digit).

    Args:
        root: Unused (the data is bundled with scikit-learn); kept for a uniform interface.
        classes: Digits to keep, as indices or names ``"0"``..``"9"``; ``None`` keeps all.
        batch_size: Images per batch of every loader.
        num_workers: DataLoader worker processes.
        samples_per_class: Cap on training images per class (drawn with ``seed``).
        val_fraction: Fraction of each class's training images held out for validation.
        calibration_samples_per_class: Training images per class in the calibration loader.
        image_size: Side of the square images; ``None`` keeps the native 8.
        augment: Random crop with 1-pixel padding on training images.
        seed: Seed for the validation split, the cap, the calibration draw and shuffling.
        download: Ignored (nothing to download).
        test_samples_per_class: Cap on test images per class (fixed draw, any seed).
    """

    name = "digits"
    title = "Digits"
    native_size = 8
    mean = (0.3053, 0.3053, 0.3053)
    std = (0.3760, 0.3760, 0.3760)
    allow_flip = False

    needs_root = False

    @classmethod
    def all_class_names(cls) -> list[str]:
        """The digits ``"0"``..``"9"``."""
        return [str(d) for d in range(10)]

    def _load_split(self, split: str) -> LoadedSplit:
        images, labels = _digits()
        keep = _test_mask() if split == "test" else ~_test_mask()
        tensor = torch.from_numpy(images[keep]).unsqueeze(1)
        return LoadedSplit(TensorImageSource(tensor), labels[keep])
