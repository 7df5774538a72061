"""Tests of the class-subset DataModules on real digits and on tiny real-format fixtures."""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from capl.datamodules import (
    IMAGENET_SUBSETS,
    CIFAR10Subset,
    CIFAR100Subset,
    ClassSubsetDataModule,
    DigitsSubset,
    FashionMNISTSubset,
    GTSRBSubset,
    ImageNetSubset,
    imagenet_classes,
)
from capl.errors import ConfigError
from tests.fixtures_data import (
    cifar_checksums_skipped,
    decode_classes,
    imagenet_pixel,
    write_cifar10,
    write_cifar100,
    write_fashion_mnist,
    write_gtsrb,
    write_imagenet,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _skip_cifar_md5() -> Iterator[None]:
    with cifar_checksums_skipped():
        yield


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("data")
    out = {name: base / name for name in ("cifar10", "cifar100", "fmnist", "gtsrb", "imagenet")}
    write_cifar10(out["cifar10"])
    write_cifar100(out["cifar100"], CIFAR100Subset.all_class_names())
    write_fashion_mnist(out["fmnist"])
    write_gtsrb(out["gtsrb"])
    write_imagenet(out["imagenet"])
    return out


def _labels(loader: torch.utils.data.DataLoader) -> list[int]:
    return [int(y) for _, ys in loader for y in ys]


def _images(loader: torch.utils.data.DataLoader) -> torch.Tensor:
    return torch.cat([x for x, _ in loader])


# One builder per DataModule, with a 2-class subset given in "reverse" order.
Builder = Callable[..., ClassSubsetDataModule]
BUILDERS: dict[
    str, tuple[Callable[[dict[str, Path]], Builder], list[int], tuple[int, int, int]]
] = {
    "digits": (lambda r: DigitsSubset, [7, 2], (3, 8, 8)),
    "cifar10": (lambda r: lambda **kw: CIFAR10Subset(str(r["cifar10"]), **kw), [7, 2], (3, 32, 32)),
    "cifar100": (
        lambda r: lambda **kw: CIFAR100Subset(str(r["cifar100"]), **kw),
        [99, 1],
        (3, 32, 32),
    ),
    "fashion_mnist": (
        lambda r: lambda **kw: FashionMNISTSubset(str(r["fmnist"]), **kw),
        [7, 2],
        (3, 28, 28),
    ),
    "gtsrb": (lambda r: lambda **kw: GTSRBSubset(str(r["gtsrb"]), **kw), [33, 1], (3, 32, 32)),
    "imagenet": (
        lambda r: lambda **kw: ImageNetSubset(str(r["imagenet"]), image_size=32, **kw),
        [985, 0],
        (3, 32, 32),
    ),
}


@pytest.fixture(params=list(BUILDERS))
def case(request: pytest.FixtureRequest, roots: dict[str, Path]):
    make, classes, shape = BUILDERS[request.param]
    return request.param, make(roots), classes, shape


# ------------------------------------------------------------------ common contract, all six


def test_contract_shapes_labels_and_attributes(case) -> None:
    name, make, classes, shape = case
    dm = make(classes=classes, batch_size=4, calibration_samples_per_class=2)
    # Class selection is resolved before setup.
    assert dm.name == name
    assert dm.class_indices == classes
    assert dm.num_classes == 2
    assert dm.input_shape == shape
    assert len(dm.class_names) == 2
    dm.setup("fit")
    for loader in (
        dm.train_dataloader(),
        dm.val_dataloader(),
        dm.test_dataloader(),
        dm.calibration_dataloader(),
    ):
        x, y = next(iter(loader))
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == shape
        assert set(_labels(loader)) == {0, 1}


def test_contract_splits_and_calibration(case) -> None:
    _, make, classes, _ = case
    dm = make(classes=classes, batch_size=5, calibration_samples_per_class=2, val_fraction=0.2)
    dm.setup()
    train, val, cal = set(dm.train_indices), set(dm.val_indices), set(dm.calibration_indices)
    assert train and val
    assert not train & val
    assert cal <= train
    assert Counter(_labels(dm.calibration_dataloader())) == {0: 2, 1: 2}
    # Grouped by class, in the order of class_indices.
    assert _labels(dm.calibration_dataloader()) == [0, 0, 1, 1]
    val_counts = Counter(_labels(dm.val_dataloader()))
    assert val_counts[0] >= 1 and val_counts[1] >= 1


def test_contract_determinism(case) -> None:
    _, make, classes, _ = case
    kw = {"classes": classes, "batch_size": 3, "calibration_samples_per_class": 3}
    a, b = make(seed=0, **kw), make(seed=0, **kw)
    assert torch.equal(_images(a.calibration_dataloader()), _images(b.calibration_dataloader()))
    for (xa, ya), (xb, yb) in zip(a.train_dataloader(), b.train_dataloader()):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    others = [make(seed=s, **kw).calibration_indices.tolist() for s in (1, 2, 3)]
    assert any(o != a.calibration_indices.tolist() for o in others)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion_mnist", "gtsrb"])
def test_labels_follow_given_order(name: str, roots: dict[str, Path]) -> None:
    # Lossless fixtures: pixel values encode the original class (digits and ImageNet have
    # their own checks against the real images / JPEG colours).
    make, classes, _ = BUILDERS[name]
    dm = make(roots)(classes=classes, batch_size=64, calibration_samples_per_class=2)
    for loader in (dm.train_dataloader(), dm.test_dataloader(), dm.calibration_dataloader()):
        for x, y in loader:
            originals = decode_classes(x, dm.mean, dm.std)
            assert [dm.class_indices[int(label)] for label in y] == originals


def test_contract_samples_per_class_cap(case) -> None:
    _, make, classes, _ = case
    dm = make(classes=classes, samples_per_class=3, calibration_samples_per_class=2)
    assert Counter(_labels(dm.train_dataloader())) == {0: 3, 1: 3}
    with pytest.raises(ConfigError, match=r"samples_per_class=100000 exceeds .* class"):
        make(classes=classes, samples_per_class=100_000).setup()
    with pytest.raises(ConfigError, match=r"calibration_samples_per_class=4 exceeds .*class"):
        make(classes=classes, samples_per_class=3, calibration_samples_per_class=4).setup()


def test_contract_augmented_training_keeps_shape(case) -> None:
    _, make, classes, shape = case
    dm = make(classes=classes, augment=True, batch_size=4, calibration_samples_per_class=2)
    x, _ = next(iter(dm.train_dataloader()))
    assert tuple(x.shape[1:]) == shape
    # Augmentation draws from torch's RNG (seeded by seed_everything): same seed, same batch.
    again = make(classes=classes, augment=True, batch_size=4, calibration_samples_per_class=2)
    torch.manual_seed(0)
    first = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    second = next(iter(again.train_dataloader()))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # Calibration data is never augmented.
    plain = make(classes=classes, batch_size=4, calibration_samples_per_class=2)
    assert torch.equal(
        _images(dm.calibration_dataloader()), _images(plain.calibration_dataloader())
    )


# ------------------------------------------------------------------------------------ digits


def test_digits_real_counts_and_fixed_test_split() -> None:
    a, b = DigitsSubset(seed=0), DigitsSubset(seed=1)
    a.setup()
    b.setup()
    assert a.total_classes == 10 and a.class_names == [str(d) for d in range(10)]
    total = len(a.train_indices) + len(a.val_indices) + len(a.test_indices)
    assert total == 1797
    assert 350 <= len(a.test_indices) <= 370
    assert np.array_equal(a.test_indices, b.test_indices)
    assert torch.equal(_images(a.test_dataloader()), _images(b.test_dataloader()))
    assert not np.array_equal(a.val_indices, b.val_indices)
    x, _ = next(iter(a.train_dataloader()))
    assert x.shape == (64, 3, 8, 8)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_digits_labels_match_the_real_images() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    flat = torch.tensor(digits.images.reshape(len(digits.images), -1) / 16.0, dtype=torch.float32)
    dm = DigitsSubset(classes=["7", 2], calibration_samples_per_class=4)
    assert dm.class_indices == [7, 2]
    for loader in (dm.test_dataloader(), dm.train_dataloader(), dm.calibration_dataloader()):
        x, y = next(iter(loader))
        raw = (x[:, 0] * dm.std[0] + dm.mean[0]).reshape(len(x), -1)
        nearest = torch.cdist(raw, flat).argmin(dim=1)
        assert torch.cdist(raw, flat).min(dim=1).values.max() < 1e-4
        originals = [int(digits.target[i]) for i in nearest]
        assert [dm.class_indices[int(label)] for label in y] == originals


def test_digits_options() -> None:
    dm = DigitsSubset(classes="3, 5", image_size=32, val_fraction=0.0)
    assert dm.class_indices == [3, 5] and dm.input_shape == (3, 32, 32)
    dm.setup()
    assert len(dm.val_indices) == 0
    assert len(dm.val_dataset) == 0
    assert next(iter(dm.train_dataloader()))[0].shape[1:] == (3, 32, 32)
    # Same class keeps the same images whatever else is selected.
    alone = DigitsSubset(classes=[3])
    alone.setup()
    positions = set(dm.train_indices) | set(dm.val_indices)
    assert set(alone.train_indices) <= positions
    assert DigitsSubset().class_indices == list(range(10))


def test_digits_pickles_for_spawned_workers() -> None:
    dm = DigitsSubset(classes=[1, 2])
    dm.setup()
    clone = pickle.loads(pickle.dumps(dm))
    assert clone.class_indices == [1, 2] and len(clone.train_dataset) == len(dm.train_dataset)


def test_no_flip_for_digits_and_signs(roots: dict[str, Path]) -> None:
    def steps(dm: ClassSubsetDataModule) -> set[type]:
        return {type(t) for t in dm._transform(train=True).transforms}

    assert v2.RandomHorizontalFlip not in steps(DigitsSubset(augment=True))
    assert v2.RandomHorizontalFlip not in steps(GTSRBSubset(str(roots["gtsrb"]), augment=True))
    assert v2.RandomHorizontalFlip in steps(CIFAR10Subset(str(roots["cifar10"]), augment=True))
    assert v2.RandomCrop in steps(DigitsSubset(augment=True))


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
        ({"num_workers": -1}, r"num_workers must be an integer >= 0"),
        ({"val_fraction": 1.0}, r"val_fraction must be a number in \[0, 1\), got 1.0"),
        ({"val_fraction": -0.1}, r"val_fraction .* got -0.1"),
        ({"calibration_samples_per_class": 0}, r"calibration_samples_per_class must be"),
        ({"samples_per_class": 0}, r"samples_per_class must be an integer >= 1"),
        ({"image_size": 0}, r"image_size must be"),
        ({"classes": [11]}, r"class index 11 is out of range for Digits: use indices 0..9"),
        ({"classes": ["eleven"]}, r"unknown class 'eleven' for Digits.*valid names: 0, 1"),
        ({"classes": [3, 3]}, r"duplicate class 3 \('3'\)"),
        ({"classes": [3, "3"]}, r"duplicate class 3"),
        ({"classes": []}, r"classes selects no class of Digits"),
        ({"classes": " , "}, r"classes selects no class"),
        ({"classes": [True]}, r"class True must be an index or a name"),
    ],
)
def test_digits_argument_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        DigitsSubset(**kwargs)
    assert "\n" not in str(info.value)


def test_too_many_samples_names_class_and_count() -> None:
    with pytest.raises(ConfigError, match=r"samples_per_class=500 exceeds the \d+ .* class 4"):
        DigitsSubset(classes=[4], samples_per_class=500).setup()
    with pytest.raises(ConfigError, match=r"calibration_samples_per_class=400 .* class 4"):
        DigitsSubset(classes=[4], calibration_samples_per_class=400).setup()


def test_missing_datasets_name_path_and_layout(tmp_path: Path) -> None:
    cases = [
        (
            CIFAR10Subset,
            r"CIFAR-10 not found at .*empty: expected .*cifar-10-batches-py/"
            r"data_batch_1..5, test_batch and batches.meta .*download: true",
        ),
        (CIFAR100Subset, r"CIFAR-100 not found at .*cifar-100-python/train, test and meta"),
        (FashionMNISTSubset, r"FashionMNIST not found at .*FashionMNIST/raw/"),
        (GTSRBSubset, r"GTSRB not found at .*gtsrb/GTSRB/Training/<00000..00042>/\*.ppm"),
        (ImageNetSubset, r"ImageNet not found at .*empty: expected .*train/<wnid>/\*.JPEG"),
    ]
    root = str(tmp_path / "empty")
    for cls, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            cls(root, classes=[0]).setup()


def test_cifar_md5_mismatch_is_reported(roots: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"CIFAR-10 at .* integrity check .*download: true"):
        # Outside the md5 bypass: the fixture is not the real CIFAR-10.
        with pytest.MonkeyPatch.context() as mp:
            import torchvision.datasets.cifar as cifar_module
            from torchvision.datasets.utils import check_integrity

            mp.setattr(cifar_module, "check_integrity", check_integrity)
            CIFAR10Subset(str(roots["cifar10"]), classes=[0]).setup()


def test_malformed_fashion_mnist(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(ConfigError, match=r"FashionMNIST idx files in .* are malformed"):
        FashionMNISTSubset(str(tmp_path), classes=[0]).setup()


# ------------------------------------------------------------------------- per-dataset names


def test_cifar_class_names(roots: dict[str, Path]) -> None:
    dm = CIFAR10Subset(str(roots["cifar10"]), classes=["horse", "Bird"], batch_size=100)
    assert dm.class_indices == [7, 2] and dm.class_names == ["horse", "bird"]
    assert dm.total_classes == 10
    with pytest.raises(ConfigError, match=r"unknown class 'hrose'.*did you mean 'horse'"):
        CIFAR10Subset(str(roots["cifar10"]), classes=["hrose"])
    dm100 = CIFAR100Subset(
        str(roots["cifar100"]), classes=["worm", "aquarium_fish"], calibration_samples_per_class=2
    )
    assert dm100.class_indices == [99, 1] and dm100.total_classes == 100
    dm100.setup()
    # Fixture: 6 train images per class, 10% val -> 1 val, 5 train; 2 test per class.
    assert Counter(_labels(dm100.train_dataloader())) == {0: 5, 1: 5}
    assert Counter(_labels(dm100.test_dataloader())) == {0: 2, 1: 2}


def test_fashion_mnist_is_grayscale_replicated(roots: dict[str, Path]) -> None:
    dm = FashionMNISTSubset(
        str(roots["fmnist"]), classes=["Sneaker", "Pullover"], calibration_samples_per_class=2
    )
    assert dm.class_indices == [7, 2] and dm.total_classes == 10
    x, _ = next(iter(dm.test_dataloader()))
    assert torch.equal(x[:, 0], x[:, 2])


def test_gtsrb_class_ids_from_folders_and_csv(roots: dict[str, Path]) -> None:
    # Only folders 00001, 00014, 00033 exist: labels must still be the ClassIds.
    dm = GTSRBSubset(
        str(roots["gtsrb"]),
        classes=["Stop", 33, "Speed limit (30km/h)"],
        calibration_samples_per_class=2,
    )
    assert dm.class_indices == [14, 33, 1] and dm.total_classes == 43
    assert dm.class_names[0] == "Stop"
    dm.setup()
    assert Counter(_labels(dm.test_dataloader())) == {0: 2, 1: 2, 2: 2}
    for x, y in dm.train_dataloader():
        assert [dm.class_indices[int(v)] for v in y] == decode_classes(x, dm.mean, dm.std)
    with pytest.raises(ConfigError, match=r"class 0 \('Speed limit \(20km/h\)'\) has no training"):
        GTSRBSubset(str(roots["gtsrb"]), classes=[0]).setup()


def test_gtsrb_missing_test_csv(tmp_path: Path) -> None:
    write_gtsrb(tmp_path, classes=(2,))
    (tmp_path / "gtsrb" / "GT-final_test.csv").unlink()
    with pytest.raises(ConfigError, match=r"GTSRB test set not found .*GT-final_test.csv"):
        GTSRBSubset(str(tmp_path), classes=[2]).setup()


def test_imagenet_standard_indices() -> None:
    wnids, names = imagenet_classes()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    expected = {
        "n01440764": (0, "tench"),
        "n03947888": (724, "pirate"),
        "n11939491": (985, "daisy"),
        "n15075141": (999, None),
    }
    for wnid, (index, name) in expected.items():
        assert wnids.index(wnid) == index
        if name:
            assert names[index] == name
    similar = ImageNetSubset("unused", classes="similar")
    assert similar.num_classes == 10 and similar.class_indices[0] == 724
    assert similar.wnids == IMAGENET_SUBSETS["similar"]
    distinct = ImageNetSubset("unused", classes="distinct")
    assert distinct.class_names[0] == "daisy" and distinct.total_classes == 1000
    assert ImageNetSubset("unused").input_shape == (3, 224, 224)


def test_imagenet_subset_folder_maps_to_standard_labels(roots: dict[str, Path]) -> None:
    dm = ImageNetSubset(
        str(roots["imagenet"]),
        classes=["daisy", "n01440764", 724],
        image_size=32,
        batch_size=50,
        calibration_samples_per_class=2,
    )
    assert dm.class_indices == [985, 0, 724]
    assert dm.wnids == ["n11939491", "n01440764", "n03947888"]
    pixel_to_original = {imagenet_pixel(0): 0, imagenet_pixel(1): 724, imagenet_pixel(2): 985}
    for loader in (dm.train_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        raw = (x[:, 1] * dm.std[1] + dm.mean[1]).flatten(1).median(dim=1).values * 255
        for value, label in zip(raw.tolist(), y.tolist()):
            nearest = min(pixel_to_original, key=lambda p: abs(p - value))
            assert abs(nearest - value) < 8
            assert pixel_to_original[nearest] == dm.class_indices[label]


def test_imagenet_errors(roots: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"ImageNet class folder .*n03673027 not found"):
        ImageNetSubset(str(roots["imagenet"]), classes="similar").setup()
    with pytest.raises(ConfigError, match=r"unknown class 'n99999999'.*WNID"):
        ImageNetSubset(str(roots["imagenet"]), classes=["n99999999"])
    with pytest.raises(ConfigError, match=r"ImageNet cannot be downloaded"):
        ImageNetSubset(str(roots["imagenet"]), download=True)


# ----------------------------------------------------------------------------------- configs


CONFIGS = sorted((REPO / "configs" / "data").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_data_configs_instantiate(path: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(ClassSubsetDataModule, "data")
    cfg = parser.parse_path(str(path))
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, ClassSubsetDataModule)
    assert dm.name in path.stem
    if isinstance(dm, DigitsSubset):
        dm.setup()
        assert dm.num_classes == 10


# ------------------------------------------------------------------ FashionMNIST layouts, subsets


@pytest.mark.parametrize(
    ("layout", "compressed"),
    [("torchvision", False), ("torchvision", True), ("flat", False), ("flat", True)],
)
def test_fashion_mnist_layouts(tmp_path: Path, layout: str, compressed: bool) -> None:
    labels = write_fashion_mnist(tmp_path, layout=layout, compressed=compressed)
    dm = FashionMNISTSubset(
        str(tmp_path), classes="distinct", val_fraction=0.0, calibration_samples_per_class=2
    )
    dm.setup()
    assert dm.class_indices == [1, 3, 7, 8]
    assert dm.class_names == ["Trouser", "Dress", "Sneaker", "Bag"]
    images, subset_labels = next(iter(dm.test_dataloader()))
    expected = sorted(i for i, c in enumerate(labels["test"]) if c in (1, 3, 7, 8))
    assert len(dm.test_dataset) == len(expected)
    originals = decode_classes(images, dm.mean, dm.std)
    assert originals == [dm.class_indices[int(y)] for y in subset_labels]
    if compressed:  # read in place: nothing extracted next to the .gz files
        assert not list(tmp_path.rglob("*-ubyte"))


def test_fashion_mnist_named_subsets(roots: dict[str, Path]) -> None:
    similar = FashionMNISTSubset(str(roots["fmnist"]), classes="similar")
    assert similar.class_names == ["T-shirt/top", "Pullover", "Coat", "Shirt"]
    distinct = FashionMNISTSubset(str(roots["fmnist"]), classes="Distinct")
    assert distinct.class_indices == [1, 3, 7, 8]


def test_fashion_mnist_missing_names_both_layouts_and_package(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        FashionMNISTSubset(str(tmp_path), classes=[0]).setup()
    message = str(info.value)
    assert "\n" not in message
    assert "FashionMNIST/raw/" in message and "dataset-fashion-mnist" in message
    assert "-ubyte[.gz]" in message


def test_fashion_mnist_truncated_gz_is_malformed(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, layout="flat", compressed=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ConfigError, match=r"FashionMNIST idx files in .* are malformed"):
        FashionMNISTSubset(str(tmp_path), classes=[0]).setup()


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.fashion_mnist
@pytest.mark.skipif(
    not (DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_files() -> None:
    dm = FashionMNISTSubset(str(DEBIAN_FASHION), classes="similar", image_size=32)
    dm.setup()
    # the real test split: 1,000 images per class; the training split 6,000 minus validation
    assert len(dm.test_dataset) == 4000
    assert len(dm.train_dataset) + len(dm.val_dataset) == 24000
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape[1:] == (3, 32, 32) and labels.max() < 4


def test_test_cap_is_per_class_and_the_same_for_every_seed(tmp_path: Path) -> None:
    labels = write_fashion_mnist(tmp_path, train_per_class=6, test_per_class=5)
    kw = {"classes": [2, 7], "calibration_samples_per_class": 2, "test_samples_per_class": 3}
    first = FashionMNISTSubset(str(tmp_path), seed=0, **kw)
    other = FashionMNISTSubset(str(tmp_path), seed=4, **kw)
    first.setup()
    other.setup()
    assert np.array_equal(first.test_indices, other.test_indices)
    kept = [labels["test"][i] for i in first.test_indices]
    assert Counter(kept) == {2: 3, 7: 3}
    full = FashionMNISTSubset(str(tmp_path), classes=[2, 7], calibration_samples_per_class=2)
    full.setup()
    assert set(first.test_indices) < set(full.test_indices)
    with pytest.raises(ConfigError, match="test_samples_per_class must be an integer >= 1"):
        FashionMNISTSubset(str(tmp_path), test_samples_per_class=0)
