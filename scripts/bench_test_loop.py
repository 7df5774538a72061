"""``Trainer.test`` on capl's module against a plain ``torch.inference_mode`` loop (run by hand).

Both read the same test loader of a set-up DataModule and score the same network on the same
class rows; they run one after the other in alternating rounds (order flipped every round), and
the reported ratio is the median over rounds of plain-loop time / ``Trainer.test`` time (1.0:
Lightning costs nothing; the goal is >= 0.9). The Trainer is built once per round with the
settings a ``capl test`` run uses on CPU (progress bar on, no logger, no checkpointing); the
``--no-progress-bar`` variant shows what the bar itself costs.

python scripts/bench_test_loop.py --data fashion --rounds 7 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer

from capl.benchmark import environment_info
from capl.datamodules import DigitsSubset, FashionMNISTSubset
from capl.evaluation import target_rows
from capl.module import ImageClassifier

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def datamodule(name: str, batch_size: int) -> Any:
    """A set-up test DataModule: Fashion-MNIST ``similar`` (4,000 images) or digits 3/5/8."""
    if name == "fashion":
        dm = FashionMNISTSubset(root=FASHION_ROOT, classes="similar", batch_size=batch_size)
    else:
        dm = DigitsSubset(classes=[3, 5, 8], image_size=32, batch_size=batch_size)
    dm.setup("test")
    return dm


def plain_loop(module: ImageClassifier, loader: Any, rows: list[int]) -> float:
    """Accuracy of ``module.network`` over ``loader`` in eval mode under ``inference_mode``."""
    module.network.eval()
    correct = total = 0
    with torch.inference_mode():
        for images, labels in loader:
            logits = module.network(images)[:, rows]
            correct += int((logits.argmax(1) == labels).sum())
            total += labels.numel()
    return correct / total


def lightning_test(module: ImageClassifier, dm: Any, progress_bar: bool) -> float:
    """Accuracy from ``Trainer.test`` with a ``capl test``-like CPU Trainer."""
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=progress_bar,
    )  # fmt: skip
    (metrics,) = trainer.test(module, datamodule=dm, verbose=False)
    return float(metrics["test/acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["fashion", "digits"], default="fashion")
    parser.add_argument("--network", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress-bar", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dm = datamodule(args.data, args.batch_size)
    module = ImageClassifier(args.network, num_classes=10, small_input=True)
    rows = target_rows(module.head_classes, dm.class_indices)
    progress = not args.no_progress_bar
    plain_loop(module, dm.test_dataloader(), rows)  # warm-up of both paths
    lightning_test(module, dm, progress)
    times: dict[str, list[float]] = {"plain": [], "trainer.test": []}
    accuracy: dict[str, float] = {}
    for i in range(args.rounds):
        order = ["plain", "trainer.test"] if i % 2 == 0 else ["trainer.test", "plain"]
        for name in order:
            start = time.perf_counter()
            if name == "plain":
                accuracy[name] = plain_loop(module, dm.test_dataloader(), rows)
            else:
                accuracy[name] = lightning_test(module, dm, progress)
            times[name].append(time.perf_counter() - start)
    ratios = [p / t for p, t in zip(times["plain"], times["trainer.test"])]
    payload = {
        "command": "python scripts/bench_test_loop.py " + " ".join(sys.argv[1:]),
        "images": len(dm.test_dataloader().dataset),
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio_plain_over_test": statistics.median(ratios),
        "ratios": ratios,
        "accuracy": accuracy,
        "load_average": os.getloadavg(),
        "environment": environment_info(args.threads),
    }
    print(json.dumps({k: v for k, v in payload.items() if k != "environment"}, indent=1))
    if args.output:
        args.output.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
