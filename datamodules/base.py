"""Base class for class-subset DataModules.

A :class:`ClassSubsetDataModule` selects some classes of an image-classification dataset,
remaps their labels to ``0..k-1`` in the order the user gave, carves a stratified, seeded
validation split from the training data, optionally caps the number of training images per
class, and offers a deterministic calibration loader (a fixed number of training images per
class) for data-driven pruning criteria.

Subclasses only say how to load one split of their dataset (:meth:`_load_split`), which class
names exist, and which transforms fit their images; everything about class selection,
splitting and loaders lives here so that every dataset follows the same conventions (see
"Class indices" in docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from capl.errors import ConfigError

from .selection import (
    ClassNames,
    SplitDraw,
    check_flag,
    check_fraction,
    check_int,
    check_optional_int,
    draw_splits,
    kept_test_positions,
    resolve_classes,
)
from .sources import (
    DatasetImageSource,
    ImageSource,
    LoadedSplit,
    SubsetImageDataset,
    TensorImageSource,
    subset_dataset,
)

log = logging.getLogger(__name__)

__all__ = [
    "ClassSubsetDataModule",
    "DatasetImageSource",
    "ImageSource",
    "LoadedSplit",
    "SubsetImageDataset",
    "TensorImageSource",
]


class ClassSubsetDataModule(LightningDataModule):
    """A LightningDataModule over a subset of a dataset's classes.

    Labels of the selected classes are remapped to ``0..k-1`` in the order given by
    ``classes``. Validation images are carved from the training split (stratified, seeded);
    the calibration loader takes exactly ``calibration_samples_per_class`` training images of
    each class (after carving validation and applying ``samples_per_class``), without
    augmentation or shuffling. Every random draw is made per class from ``seed`` and the
    class's original index, so a class keeps the same images whichever other classes are
    selected with it.

    Class selection and the attributes ``name``, ``total_classes``, ``num_classes``,
    ``class_indices``, ``class_names`` and ``input_shape`` are resolved in ``__init__``;
    images are read in :meth:`setup`.

    Args:
        root: Folder holding the dataset in the layout torchvision expects.
        classes: Classes to keep, as original indices or class names (a list, or a string of
            comma-separated items, or the name of a predefined subset where the dataset has
            some); ``None`` keeps all classes.
        batch_size: Images per batch of every loader.
        num_workers: DataLoader worker processes.
        samples_per_class: Cap on training images per class (drawn with ``seed``); ``None``
            keeps all.
        val_fraction: Fraction of each class's training images held out for validation, in
            [0, 1).
        calibration_samples_per_class: Training images per class in the calibration loader.
        image_size: Side of the square images the loaders produce; ``None`` keeps the
            dataset's native size.
        augment: Augment training images (random crop with padding, and horizontal flip where
            a flip keeps the class's meaning).
        seed: Seed for the validation split, the cap, the calibration draw and the training
            shuffle.
        download: Let torchvision download the dataset where it can.
        test_samples_per_class: Cap on test images per class, drawn with a fixed seed (the
            same images whatever ``seed``) to bound evaluation time; ``None`` keeps all.
    """

    name: ClassVar[str] = "dataset"
    title: ClassVar[str] = "Dataset"
    native_size: ClassVar[int] = 32
    mean: ClassVar[tuple[float, ...]] = (0.5, 0.5, 0.5)
    std: ClassVar[tuple[float, ...]] = (0.5, 0.5, 0.5)
    allow_flip: ClassVar[bool] = True
    named_subsets: ClassVar[dict[str, list[int | str]]] = {}
    #: Whether ``root`` must name a folder (False for data bundled with a package).
    needs_root: ClassVar[bool] = True
    #: Why ``download: true`` cannot work for this dataset (None: it can).
    download_refusal: ClassVar[str | None] = None

    def __init__(
        self,
        root: str = "",
        classes: list[int | str] | str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        samples_per_class: int | None = None,
        val_fraction: float = 0.1,
        calibration_samples_per_class: int = 16,
        image_size: int | None = None,
        augment: bool = False,
        seed: int = 0,
        download: bool = False,
        test_samples_per_class: int | None = None,
    ) -> None:
        super().__init__()
        self.root = self._check_root(root)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.samples_per_class = check_optional_int("samples_per_class", samples_per_class)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.test_samples_per_class = check_optional_int(
            "test_samples_per_class", test_samples_per_class
        )
        self.calibration_samples_per_class = check_int(
            "calibration_samples_per_class", calibration_samples_per_class, minimum=1
        )
        self.image_size = (
            self.native_size if image_size is None else check_int("image_size", image_size, 1)
        )
        self.augment = check_flag("augment", augment)
        self.seed = check_int("seed", seed, minimum=0)
        if check_flag("download", download) and self.download_refusal:
            raise ConfigError(self.download_refusal)
        self.download = download

        self._all_class_names = list(self.all_class_names())
        self.total_classes: int = len(self._all_class_names)
        self.class_indices: list[int] = resolve_classes(classes, self._class_names())
        self.class_names: list[str] = [self._all_class_names[i] for i in self.class_indices]
        self.num_classes: int = len(self.class_indices)
        self.input_shape: tuple[int, int, int] = (3, self.image_size, self.image_size)

        self._is_setup = False
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.calibration_dataset: Dataset | None = None
        #: Positions in the full training split (all classes) of each derived split.
        self.train_indices: np.ndarray = np.empty(0, dtype=np.int64)
        self.val_indices: np.ndarray = np.empty(0, dtype=np.int64)
        self.calibration_indices: np.ndarray = np.empty(0, dtype=np.int64)
        #: Positions in the full test split (all classes) of the test images kept.
        self.test_indices: np.ndarray = np.empty(0, dtype=np.int64)

    # ----------------------------------------------------------------- dataset-specific parts

    @classmethod
    def all_class_names(cls) -> list[str]:
        """Names of all classes of the dataset, by original index."""
        raise NotImplementedError

    def class_aliases(self) -> dict[str, int]:
        """Extra identifiers accepted in ``classes`` besides names (e.g. ImageNet WNIDs)."""
        return {}

    def _load_split(self, split: str) -> LoadedSplit:
        """Load split ``"train"`` or ``"test"`` of all classes (raise ConfigError if absent)."""
        raise NotImplementedError

    def _download(self) -> None:
        """Download the dataset (called from :meth:`prepare_data` when ``download`` is set)."""

    def _geometry(self, train: bool) -> list[Callable[[Any], Any]]:
        """Resize/crop/flip steps, applied before conversion to float.

        Args:
            train: Whether these are training transforms (augment if ``self.augment``).

        Returns:
            torchvision v2 transforms producing ``image_size`` x ``image_size`` images.
        """
        size = self.image_size
        steps: list[Callable[[Any], Any]] = []
        if size != self.native_size:
            steps.append(v2.Resize((size, size), antialias=True))
        if train and self.augment:
            steps.append(v2.RandomCrop(size, padding=max(1, size // 8)))
            if self.allow_flip:
                steps.append(v2.RandomHorizontalFlip())
        return steps

    # ------------------------------------------------------------------------- root, classes

    @classmethod
    def _check_root(cls, root: Any) -> str:
        if not isinstance(root, str | os.PathLike):
            raise ConfigError(f"root must be a path string, got {root!r}")
        if cls.needs_root and not os.fspath(root):
            raise ConfigError(
                f"{cls.title} needs root: the folder holding the dataset (data.init_args.root)"
            )
        return os.fspath(root)

    def _class_label(self, index: int) -> str:
        return f"{index} ({self._all_class_names[index]!r})"

    def _unknown_class_hint(self) -> str:
        if self.total_classes <= 100:
            return "valid names: " + ", ".join(self._all_class_names)
        return f"{self.total_classes} classes, see the class list of {self.title}"

    def _class_names(self) -> ClassNames:
        return ClassNames(
            self.title,
            self._all_class_names,
            self.class_aliases(),
            self.named_subsets,
            self._unknown_class_hint(),
        )

    # ----------------------------------------------------------------------------- transforms

    def _transform(self, train: bool) -> v2.Compose:
        """The full per-image pipeline: geometry, float in [0, 1], 3 channels, normalise."""
        return v2.Compose(
            [
                v2.ToImage(),
                *self._geometry(train),
                v2.ToDtype(torch.float32, scale=True),
                v2.RGB(),
                v2.Normalize(list(self.mean), list(self.std)),
                v2.ToPureTensor(),
            ]
        )

    def _is_random(self, train: bool) -> bool:
        return train and self.augment

    # ------------------------------------------------------------------------------ lifecycle

    def prepare_data(self) -> None:
        """Download the dataset if ``download`` is set (Lightning runs this on one process)."""
        if self.download:
            self._download()

    def setup(self, stage: str | None = None) -> None:
        """Load the dataset and build the train/val/test/calibration splits (idempotent).

        All splits are built whatever the stage, because pruning needs the calibration data
        from the training split during ``test`` too.

        Args:
            stage: Lightning stage (``fit``, ``validate``, ``test``, ``predict``); unused.
        """
        if self._is_setup:
            return
        train = self._load_split("train")
        test = self._load_split("test")
        self._check_labels(train, "training")
        self._check_labels(test, "test")

        draw = SplitDraw(
            self.seed, self.val_fraction, self.samples_per_class, self.calibration_samples_per_class
        )
        self.train_indices, self.val_indices, self.calibration_indices = draw_splits(
            train.labels, self.class_indices, draw, self._class_label, self._no_training_images
        )
        self.test_indices = kept_test_positions(
            test.labels, self.class_indices, self.test_samples_per_class
        )
        for original in self.class_indices:
            if not np.any(test.labels == original):
                log.warning(
                    "%s: class %s has no test images at %s",
                    self.title,
                    self._class_label(original),
                    self.root,
                )

        lookup = np.full(self.total_classes, -1, dtype=np.int64)
        lookup[self.class_indices] = np.arange(self.num_classes)
        self.train_dataset = self._make_dataset(train, self.train_indices, lookup, train=True)
        self.val_dataset = self._make_dataset(train, self.val_indices, lookup, train=False)
        self.calibration_dataset = self._make_dataset(
            train, self.calibration_indices, lookup, train=False
        )
        self.test_dataset = self._make_dataset(test, self.test_indices, lookup, train=False)
        self._is_setup = True
        log.info(
            "%s: %d classes %s, %d train / %d val / %d test / %d calibration images, input %s",
            self.title,
            self.num_classes,
            self.class_indices,
            len(self.train_indices),
            len(self.val_indices),
            len(self.test_indices),
            len(self.calibration_indices),
            self.input_shape,
        )

    def _no_training_images(self, original: int) -> str:
        return (
            f"class {self._class_label(original)} has no training images in {self.title} at "
            f"{self.root}; drop it from classes or fix root"
        )

    def _check_labels(self, split: LoadedSplit, what: str) -> None:
        labels = split.labels
        if len(labels) != len(split.source):
            raise ConfigError(
                f"{self.title} at {self.root}: {what} split has {len(split.source)} images but "
                f"{len(labels)} labels; the files are malformed, re-download them"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.total_classes):
            raise ConfigError(
                f"{self.title} at {self.root}: {what} labels span {labels.min()}..{labels.max()}"
                f", expected 0..{self.total_classes - 1}; the files are malformed, re-download"
            )

    def _make_dataset(
        self, split: LoadedSplit, indices: np.ndarray, lookup: np.ndarray, train: bool
    ) -> Dataset:
        labels = lookup[split.labels[indices]]
        transform = self._transform(train)
        return subset_dataset(
            split, indices, labels, transform, self.input_shape, self._is_random(train)
        )

    # -------------------------------------------------------------------------------- loaders

    def _require_setup(self) -> None:
        if not self._is_setup:
            self.setup()

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        assert dataset is not None
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Training images of the selected classes, shuffled with a generator seeded by ``seed``.

        Each call starts from the same seed, so two setups with the same seed yield the same
        batches. With ``num_workers > 0`` the workers' RNGs derive from that generator, so
        augmented batches repeat as well; with ``num_workers=0`` augmentation draws from the
        main process's torch RNG, which ``seed_everything`` seeds.
        """
        self._require_setup()
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation images (carved from the training split), in a fixed order."""
        self._require_setup()
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test images of the selected classes, in a fixed order."""
        self._require_setup()
        return self._loader(self.test_dataset, shuffle=False)

    def calibration_dataloader(self) -> DataLoader:
        """Exactly ``calibration_samples_per_class`` training images of each selected class.

        Drawn from the training split after carving validation and applying
        ``samples_per_class``; no augmentation, no shuffling; grouped by class in the order
        of ``class_indices``; the same tensors for the same seed.
        """
        self._require_setup()
        return self._loader(self.calibration_dataset, shuffle=False)
