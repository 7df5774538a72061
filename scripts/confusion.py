"""Confusion matrix of a base model on all classes of a DataModule, and how much of the confusion
falls inside each named class subset (does "similar" really hold the classes the model mixes up?).

    python scripts/confusion.py --checkpoint runs/fashion/base/<hash>/checkpoints/best.ckpt \
        --data FashionMNISTSubset --root /usr/share/datasets/fashion-mnist --image-size 32
"""

from __future__ import annotations

import argparse
import json

import torch

import capl.datamodules
from capl.evaluation import accuracy_from_confusion, confusion_matrix
from capl.module import ImageClassifier


def within(counts: torch.Tensor, members: list[int]) -> tuple[int, int]:
    """Errors among ``members`` (true and predicted both in the set), and all their errors."""
    errors = counts.clone()
    errors.fill_diagonal_(0)
    inside = int(errors[members][:, members].sum())
    total = int(errors[members].sum())
    return inside, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default="FashionMNISTSubset")
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--json", help="also write the matrix and subset figures here")
    args = parser.parse_args()
    data = getattr(capl.datamodules, args.data)(args.root, image_size=args.image_size)
    data.setup("test")
    network = ImageClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu").network
    counts = confusion_matrix(network, data.test_dataloader(), list(range(data.num_classes)))
    acc = accuracy_from_confusion(counts)
    names = data.class_names
    print(f"accuracy {acc['accuracy']:.4f} on {acc['samples']} test images")
    width = max(len(n) for n in names)
    print(" " * width, *[f"{i:>5d}" for i in range(len(names))])
    for i, name in enumerate(names):
        print(f"{name:>{width}}", *[f"{int(v):>5d}" for v in counts[i]])
    errors = counts.clone()
    errors.fill_diagonal_(0)
    pairs = sorted(
        ((int(errors[i, j] + errors[j, i]), i, j) for i in range(len(names)) for j in range(i)),
        reverse=True,
    )
    print("most confused pairs (both directions):")
    for n, i, j in pairs[:8]:
        print(f"  {n:4d}  {names[i]} <-> {names[j]}")
    subsets = {}
    for key, members in type(data).named_subsets.items():
        resolved = [m if isinstance(m, int) else names.index(m) for m in members]
        inside, total = within(counts, resolved)
        subsets[key] = {
            "classes": [names[m] for m in resolved],
            "errors_within": inside,
            "errors_of_members": total,
        }
        print(
            f"{key}: {inside} of its classes' {total} errors stay inside the subset "
            f"({inside / max(total, 1):.0%}); {[names[m] for m in resolved]}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "accuracy": acc["accuracy"],
                    "names": names,
                    "confusion": counts.tolist(),
                    "subsets": subsets,
                },
                handle,
                indent=1,
            )


if __name__ == "__main__":
    main()
