"""Tiny datasets written in the real on-disk formats, for tests.

Each writer creates a few images per class under ``root`` exactly as torchvision's dataset
classes (or ImageFolder) read them, so the tests exercise the real loading code. Image content
encodes the class: every pixel of an image of original class ``c`` has the value
``class_pixel(c)`` (all channels), except pixel (0, 0) of channel 0, which holds the image's
serial number within its split so that images are distinguishable. :func:`decode_classes`
recovers the original classes from a normalised batch.

CIFAR files cannot carry the real MD5 sums that torchvision checks (those belong to the real
data), so tests wrap CIFAR loading in :func:`cifar_checksums_skipped`, which replaces only the
checksum comparison by torchvision's own existence check (``check_integrity(path, md5=None)``)
while everything else (file names, pickle parsing, meta file) stays torchvision's.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

CIFAR10_NAMES = [
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


def class_pixel(original_class: int) -> int:
    """Pixel value that marks images of ``original_class`` (lossless formats, up to 100)."""
    return 20 + 2 * original_class


def decode_classes(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel: int = 1
) -> list[int]:
    """Recover the original class of each image of a normalised ``[B, 3, H, W]`` batch."""
    m = torch.tensor(mean)[channel]
    s = torch.tensor(std)[channel]
    raw = images[:, channel] * s + m
    values = raw.flatten(1).median(dim=1).values * 255
    return [round((float(v) - 20) / 2) for v in values]


def _image_array(original_class: int, serial: int, height: int, width: int) -> np.ndarray:
    image = np.full((height, width, 3), class_pixel(original_class), dtype=np.uint8)
    image[0, 0, 0] = serial % 256
    return image


def _interleaved(classes: Sequence[int], per_class: int) -> list[int]:
    # Classes interleaved, so labels in the files are not sorted by class.
    return [c for _ in range(per_class) for c in classes]


@contextlib.contextmanager
def cifar_checksums_skipped() -> Iterator[None]:
    """Let torchvision's CIFAR classes accept fixture files whose MD5 is not the real one."""
    import torchvision.datasets.cifar as cifar_module

    real = cifar_module.check_integrity

    def existence_only(fpath: str, md5: str | None = None) -> bool:
        return real(fpath, None)

    with mock.patch.object(cifar_module, "check_integrity", existence_only):
        yield


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        # Protocol 2 and str keys: what torchvision's pickle.load(..., encoding="latin1")
        # makes of the real (Python 2) batches.
        pickle.dump(obj, f, protocol=2)


def _cifar_arrays(labels: Sequence[int]) -> np.ndarray:
    rows = [
        _image_array(c, serial, 32, 32).transpose(2, 0, 1).reshape(-1)
        for serial, c in enumerate(labels)
    ]
    return np.stack(rows).astype(np.uint8)


def write_cifar10(
    root: str | os.PathLike[str], train_per_class: int = 8, test_per_class: int = 3
) -> dict[str, list[int]]:
    """Write ``root/cifar-10-batches-py`` (5 train batches, test batch, batches.meta).

    Returns:
        ``{"train": labels, "test": labels}`` in file order.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train = _interleaved(range(10), train_per_class)
    test = _interleaved(range(10), test_per_class)
    data = _cifar_arrays(train)
    for b in range(5):
        part = slice(b, None, 5)
        _dump(
            folder / f"data_batch_{b + 1}",
            {
                "batch_label": f"training batch {b + 1} of 5",
                "labels": train[part],
                "data": data[part],
                "filenames": [f"img_{i}.png" for i in range(len(train))][part],
            },
        )
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test,
            "data": _cifar_arrays(test),
            "filenames": [f"test_{i}.png" for i in range(len(test))],
        },
    )
    _dump(
        folder / "batches.meta",
        {"num_cases_per_batch": len(train) // 5, "label_names": CIFAR10_NAMES, "num_vis": 3072},
    )
    train_in_file_order = [label for b in range(5) for label in train[b::5]]
    return {"train": train_in_file_order, "test": test}


def write_cifar100(
    root: str | os.PathLike[str],
    fine_names: Sequence[str],
    classes: Sequence[int] = (0, 1, 2, 50, 99),
    train_per_class: int = 6,
    test_per_class: int = 2,
) -> dict[str, list[int]]:
    """Write ``root/cifar-100-python/{train,test,meta}`` holding images of ``classes`` only.

    Returns:
        ``{"train": fine labels, "test": fine labels}`` in file order.
    """
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": _interleaved(classes, train_per_class),
        "test": _interleaved(classes, test_per_class),
    }
    for split, labels in splits.items():
        _dump(
            folder / split,
            {
                "filenames": [f"{split}_{i}.png" for i in range(len(labels))],
                "batch_label": f"{split} batch",
                "fine_labels": labels,
                "coarse_labels": [c // 5 for c in labels],
                "data": _cifar_arrays(labels),
            },
        )
    _dump(
        folder / "meta",
        {
            "fine_label_names": list(fine_names),
            "coarse_label_names": [f"coarse_{i}" for i in range(20)],
        },
    )
    return splits


def _idx(magic: int, dims: Sequence[int], payload: np.ndarray) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload.astype(np.uint8).tobytes()


def write_fashion_mnist(
    root: str | os.PathLike[str],
    train_per_class: int = 6,
    test_per_class: int = 2,
    layout: str = "torchvision",
    compressed: bool = False,
) -> dict[str, list[int]]:
    """Write the four FashionMNIST idx files.

    Args:
        root: Where to write.
        train_per_class: Training images per class.
        test_per_class: Test images per class.
        layout: ``torchvision`` (``root/FashionMNIST/raw/``) or ``flat`` (the files directly in
            ``root``, as Debian's ``dataset-fashion-mnist`` installs them).
        compressed: Gzip the files (``.gz`` suffix), as both Debian and the original site ship.

    Returns:
        ``{"train": labels, "test": labels}`` in file order.
    """
    raw = Path(root) / "FashionMNIST" / "raw" if layout == "torchvision" else Path(root)
    raw.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compressed else ""

    def write(name: str, data: bytes) -> None:
        (raw / (name + suffix)).write_bytes(gzip.compress(data) if compressed else data)

    splits = {
        "train": _interleaved(range(10), train_per_class),
        "test": _interleaved(range(10), test_per_class),
    }
    for split, prefix in (("train", "train"), ("test", "t10k")):
        labels = splits[split]
        images = np.stack([_image_array(c, i, 28, 28)[:, :, 0] for i, c in enumerate(labels)])
        write(f"{prefix}-images-idx3-ubyte", _idx(0x00000803, (len(labels), 28, 28), images))
        write(f"{prefix}-labels-idx1-ubyte", _idx(0x00000801, (len(labels),), np.asarray(labels)))
    return splits


_GT_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"


def write_gtsrb(
    root: str | os.PathLike[str],
    classes: Sequence[int] = (1, 14, 33),
    train_per_class: int = 6,
    test_per_class: int = 2,
) -> dict[str, list[int]]:
    """Write GTSRB as torchvision reads it, with class folders for ``classes`` only.

    ``root/gtsrb/GTSRB/Training/<ClassId:05d>/<track>_<n>.ppm`` (+ ``GT-<ClassId>.csv``),
    ``root/gtsrb/GTSRB/Final_Test/Images/<n:05d>.ppm`` and ``root/gtsrb/GT-final_test.csv``.
    Images have varying sizes, like the real photos.

    Returns:
        ``{"train": labels, "test": labels}`` (test in CSV order).
    """
    base = Path(root) / "gtsrb"
    training = base / "GTSRB" / "Training"
    train_labels = []
    for c in classes:
        folder = training / f"{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = [_GT_HEADER]
        for j in range(train_per_class):
            h, w = 30 + 3 * j, 28 + 2 * j
            name = f"00000_{j:05d}.ppm"
            Image.fromarray(_image_array(c, j, h, w)).save(folder / name)
            lines.append(f"{name};{w};{h};1;1;{w - 2};{h - 2};{c}\n")
            train_labels.append(c)
        (folder / f"GT-{c:05d}.csv").write_text("".join(lines))
    images = base / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True, exist_ok=True)
    test_labels = _interleaved(classes, test_per_class)
    lines = [_GT_HEADER]
    for n, c in enumerate(test_labels):
        h, w = 34 + n, 31
        name = f"{n:05d}.ppm"
        Image.fromarray(_image_array(c, n, h, w)).save(images / name)
        lines.append(f"{name};{w};{h};1;1;{w - 2};{h - 2};{c}\n")
    (base / "GT-final_test.csv").write_text("".join(lines))
    return {"train": sorted(train_labels), "test": test_labels}


def imagenet_pixel(position: int) -> int:
    """Pixel value marking the ``position``-th WNID given to :func:`write_imagenet` (JPEG-safe)."""
    return 30 + 60 * position


def write_imagenet(
    root: str | os.PathLike[str],
    wnids: Sequence[str] = ("n01440764", "n03947888", "n11939491"),
    train_per_class: int = 6,
    val_per_class: int = 2,
) -> dict[str, int]:
    """Write ImageNet class folders ``root/{train,val}/<wnid>/*.JPEG`` with small solid JPEGs.

    The image of the i-th WNID is filled with :func:`imagenet_pixel` ``(i)`` (at most 4 WNIDs,
    spaced so that JPEG compression cannot blur one class into another).

    Returns:
        ``{wnid: pixel value}``.
    """
    if len(wnids) > 4:
        raise ValueError("at most 4 WNIDs fit the JPEG-safe pixel coding")
    pixels = {}
    for position, wnid in enumerate(wnids):
        value = imagenet_pixel(position)
        pixels[wnid] = value
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = Path(root) / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                image = np.full((40 + j, 48, 3), value, dtype=np.uint8)
                name = f"{wnid}_{j}.JPEG" if split == "train" else f"ILSVRC2012_val_{j:08d}.JPEG"
                Image.fromarray(image).save(folder / name, quality=95)
    return pixels
