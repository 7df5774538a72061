"""A callback the SLURM test puts into its DDP fit: what each rank holds, per attempt.

At train start (after a checkpoint is restored) every rank writes its pruning plan, parameter
shapes, epoch and world size; at fit end a digest of its parameters (DDP keeps them equal). In
the first attempt it waits at the end of the first epoch, after telling the test it is ready,
for the test to send SLURM's requeue signal: every rank then handles the signal at the same
place, as in a real run where the signal arrives between two steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override


class RankProbe(Callback):
    """Write ``<folder>/attempt<k>-rank<r>-{start,end}.json``; wait for the signal in attempt 0."""

    def __init__(self, folder: str, wait_s: float = 240.0) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.wait_s = wait_s
        self.attempt = int(os.environ.get("SLURM_RESTART_COUNT") or 0)

    def _write(self, trainer: Trainer, kind: str, record: dict) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"attempt{self.attempt}-rank{trainer.global_rank}-{kind}.json"
        path.write_text(json.dumps(record, sort_keys=True))
        return path

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        shapes = {k: list(v.shape) for k, v in pl_module.state_dict().items()}
        self._write(
            trainer,
            "start",
            {
                "plan": getattr(pl_module, "pruning_plan", None),
                "shapes": shapes,
                "epoch": trainer.current_epoch,
                "world_size": trainer.world_size,
                "default_root_dir": str(trainer.default_root_dir),
                "log_dir": str(trainer.log_dir),
                "ckpt_path": str(trainer.ckpt_path),
            },
        )

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.attempt != 0 or trainer.current_epoch != 0:
            return
        self._write(trainer, "ready", {"epoch": trainer.current_epoch})
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline and not trainer.received_sigterm:
            time.sleep(0.2)  # the SIGUSR1 handler runs here; SIGTERM follows the requeue

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self._write(trainer, "end", {"digest": digest.hexdigest(), "epoch": trainer.current_epoch})
