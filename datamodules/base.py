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

import difflib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from capl.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ClassSubsetDataModule", "DatasetImageSource", "TensorImageSource"]

# Precomputing a deterministic split as one tensor is much faster than transforming item by
# item, but must not blow up memory (e.g. CIFAR upsampled to 224x224).
_PRECOMPUTE_LIMIT_BYTES = 256 * 2**20
_PRECOMPUTE_CHUNK = 4096

# Purposes mixed into the per-class random streams, so that changing one draw (e.g. the
# calibration size) never changes another (e.g. the validation split).
_STREAM_SPLIT = 1
_STREAM_CALIBRATION = 2
_STREAM_TEST = 3
# The test cap's draw ignores ``seed``: every seed of a study is measured on the same images.
_TEST_CAP_SEED = 20_241_202


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


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
        if not isinstance(root, str | os.PathLike):
            raise ConfigError(f"root must be a path string, got {root!r}")
        self.root = os.fspath(root)
        if self.needs_root and not self.root:
            raise ConfigError(
                f"{self.title} needs root: the folder holding the dataset (data.init_args.root)"
            )
        self.batch_size = self._check_int("batch_size", batch_size, minimum=1)
        self.num_workers = self._check_int("num_workers", num_workers, minimum=0)
        self.samples_per_class = (
            None
            if samples_per_class is None
            else self._check_int("samples_per_class", samples_per_class, minimum=1)
        )
        if (
            isinstance(val_fraction, bool)
            or not isinstance(val_fraction, int | float)
            or not 0.0 <= float(val_fraction) < 1.0
        ):
            raise ConfigError(
                f"val_fraction must be a number in [0, 1), got {val_fraction!r}; "
                "e.g. val_fraction: 0.1"
            )
        self.val_fraction = float(val_fraction)
        self.test_samples_per_class = (
            None
            if test_samples_per_class is None
            else self._check_int("test_samples_per_class", test_samples_per_class, minimum=1)
        )
        self.calibration_samples_per_class = self._check_int(
            "calibration_samples_per_class", calibration_samples_per_class, minimum=1
        )
        self.image_size = (
            self.native_size
            if image_size is None
            else self._check_int("image_size", image_size, minimum=1)
        )
        if not isinstance(augment, bool):
            raise ConfigError(f"augment must be true or false, got {augment!r}")
        self.augment = augment
        self.seed = self._check_int("seed", seed, minimum=0)
        if not isinstance(download, bool):
            raise ConfigError(f"download must be true or false, got {download!r}")
        if download and self.download_refusal:
            raise ConfigError(self.download_refusal)
        self.download = download

        self._all_class_names = list(self.all_class_names())
        self.total_classes: int = len(self._all_class_names)
        self.class_indices: list[int] = self._resolve_classes(classes)
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

    # ---------------------------------------------------------------------- validation helpers

    @staticmethod
    def _check_int(name: str, value: Any, minimum: int) -> int:
        if not _is_int(value) or value < minimum:
            raise ConfigError(
                f"{name} must be an integer >= {minimum}, got {value!r}; "
                f"set {name} to a value >= {minimum}"
            )
        return int(value)

    def _class_label(self, index: int) -> str:
        return f"{index} ({self._all_class_names[index]!r})"

    def _unknown_class_hint(self) -> str:
        if self.total_classes <= 100:
            return "valid names: " + ", ".join(self._all_class_names)
        return f"{self.total_classes} classes, see the class list of {self.title}"

    def _resolve_classes(self, classes: list[int | str] | str | None) -> list[int]:
        total = self.total_classes
        if classes is None:
            return list(range(total))
        if isinstance(classes, str):
            key = classes.strip().lower()
            if key in self.named_subsets:
                items: list[Any] = list(self.named_subsets[key])
            else:
                items = [part.strip() for part in classes.split(",") if part.strip()]
        elif isinstance(classes, Sequence):
            items = list(classes)
        else:
            raise ConfigError(
                f"classes must be a list of class indices or names, a comma-separated string or "
                f"null, got {classes!r}"
            )
        if not items:
            raise ConfigError(
                f"classes selects no class of {self.title}; list at least one class, or use "
                "null for all classes"
            )
        by_name = {n: i for i, n in enumerate(self._all_class_names)}
        by_folded = {n.casefold(): i for i, n in enumerate(self._all_class_names)}
        aliases = self.class_aliases()
        resolved: list[int] = []
        for item in items:
            if _is_int(item):
                index = int(item)
                if not 0 <= index < total:
                    raise ConfigError(
                        f"class index {index} is out of range for {self.title}: use indices "
                        f"0..{total - 1}"
                    )
            elif isinstance(item, str):
                text = item.strip()
                if text in by_name:
                    index = by_name[text]
                elif text in aliases:
                    index = aliases[text]
                elif text.casefold() in by_folded:
                    index = by_folded[text.casefold()]
                elif text.isdigit() and int(text) < total:
                    index = int(text)
                else:
                    close = difflib.get_close_matches(text, self._all_class_names, n=3)
                    suggestion = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                    raise ConfigError(
                        f"unknown class {text!r} for {self.title}{suggestion}; use an index "
                        f"0..{total - 1} or a class name ({self._unknown_class_hint()})"
                    )
            else:
                raise ConfigError(
                    f"class {item!r} must be an index or a name (string) of {self.title}"
                )
            if index in resolved:
                raise ConfigError(
                    f"duplicate class {self._class_label(index)} in classes "
                    f"(given as {item!r}): list each class once"
                )
            resolved.append(index)
        return resolved

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

        lookup = np.full(self.total_classes, -1, dtype=np.int64)
        lookup[self.class_indices] = np.arange(self.num_classes)

        train_parts: list[np.ndarray] = []
        val_parts: list[np.ndarray] = []
        calibration_parts: list[np.ndarray] = []
        for original in self.class_indices:
            positions = np.flatnonzero(train.labels == original)
            if len(positions) == 0:
                raise ConfigError(
                    f"class {self._class_label(original)} has no training images in "
                    f"{self.title} at {self.root}; drop it from classes or fix root"
                )
            rng = np.random.default_rng([self.seed, _STREAM_SPLIT, original])
            positions = rng.permutation(positions)
            n_val = self._val_count(len(positions), original)
            val_parts.append(np.sort(positions[:n_val]))
            kept = positions[n_val:]
            if self.samples_per_class is not None:
                if self.samples_per_class > len(kept):
                    raise ConfigError(
                        f"samples_per_class={self.samples_per_class} exceeds the "
                        f"{len(kept)} training images of class {self._class_label(original)} "
                        f"left after carving validation; lower samples_per_class or "
                        f"val_fraction"
                    )
                kept = kept[: self.samples_per_class]
            train_parts.append(np.sort(kept))
            if self.calibration_samples_per_class > len(kept):
                raise ConfigError(
                    f"calibration_samples_per_class={self.calibration_samples_per_class} "
                    f"exceeds the {len(kept)} training images of class "
                    f"{self._class_label(original)}; lower calibration_samples_per_class"
                )
            cal_rng = np.random.default_rng([self.seed, _STREAM_CALIBRATION, original])
            calibration_parts.append(
                cal_rng.choice(kept, size=self.calibration_samples_per_class, replace=False)
            )

        self.train_indices = np.sort(np.concatenate(train_parts))
        self.val_indices = np.sort(np.concatenate(val_parts))
        # Grouped by class in the user's order: deterministic and easy to inspect.
        self.calibration_indices = np.concatenate(calibration_parts)
        self.test_indices = self._test_positions(test.labels, lookup)
        for original in self.class_indices:
            if not np.any(test.labels == original):
                log.warning(
                    "%s: class %s has no test images at %s",
                    self.title,
                    self._class_label(original),
                    self.root,
                )

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

    def _test_positions(self, labels: np.ndarray, lookup: np.ndarray) -> np.ndarray:
        kept = np.flatnonzero(lookup[labels] >= 0)
        cap = self.test_samples_per_class
        if cap is None:
            return kept
        parts = []
        for original in self.class_indices:
            positions = kept[labels[kept] == original]
            rng = np.random.default_rng([_TEST_CAP_SEED, _STREAM_TEST, original])
            parts.append(rng.permutation(positions)[:cap])
        return np.sort(np.concatenate(parts))

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

    def _val_count(self, available: int, original: int) -> int:
        if self.val_fraction == 0.0:
            return 0
        n_val = max(1, round(self.val_fraction * available))
        if available - n_val < 1:
            raise ConfigError(
                f"class {self._class_label(original)} has only {available} training image(s), "
                f"too few to carve val_fraction={self.val_fraction}; lower val_fraction"
            )
        return n_val

    def _make_dataset(
        self, split: LoadedSplit, indices: np.ndarray, lookup: np.ndarray, train: bool
    ) -> Dataset:
        labels = lookup[split.labels[indices]]
        transform = self._transform(train)
        if isinstance(split.source, TensorImageSource) and not self._is_random(train):
            size = self.image_size
            estimate = len(indices) * 3 * size * size * 4
            if estimate <= _PRECOMPUTE_LIMIT_BYTES:
                chunks = [
                    transform(split.source.images[indices[i : i + _PRECOMPUTE_CHUNK]])
                    for i in range(0, len(indices), _PRECOMPUTE_CHUNK)
                ]
                images = (
                    torch.cat(chunks)
                    if chunks
                    else torch.empty((0, *self.input_shape), dtype=torch.float32)
                )
                return TensorDataset(images, torch.as_tensor(labels, dtype=torch.int64))
        return SubsetImageDataset(split.source, indices, labels, transform)

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
