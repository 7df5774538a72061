"""The LightningModule hosting a network; it owns the pruned structure and the class-subset head."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from capl.errors import ConfigError
from capl.evaluation import target_rows
from capl.models import build_network

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "capl"


class ImageClassifier(LightningModule):
    """Cross-entropy image classifier over a torchvision network, evaluated on a class subset.

    The head's rows stand for original dataset classes (``head_classes``). When the DataModule
    selects a subset, training and evaluation use the logits of those classes' rows only, so a
    full-head base model and a pruned class-subset model are scored on the same k-way task.

    Args:
        network: Torchvision architecture name (see :data:`capl.models.SUPPORTED_NETWORKS`).
        num_classes: Number of head rows; ``None`` means one row per class the DataModule selects
            (or ``len(head_classes)``).
        head_classes: Original class index of each head row; default ``0..num_classes-1``, or the
            DataModule's selected classes when ``num_classes`` is also ``None``.
        small_input: Small-image stem (3x3 stride-1 first conv, no max-pool for ResNets).
        weights: ``None``, a torchvision weights name, or a local state_dict/checkpoint path.
        trust_weights: The weights file (and a ``--ckpt_path`` checkpoint) comes from a trusted
            source and may be fully unpickled, which can run code. By default only tensors and
            plain values are read, and a file that needs more is refused. Never saved in
            checkpoints: each run decides for itself.
        optimizer: Optimizer factory (YAML: ``class_path``/``init_args``).
        lr_scheduler: Optional LR scheduler factory.
        label_smoothing: Cross-entropy label smoothing.
        aux_loss_weight: Weight of each auxiliary head's loss in training (GoogLeNet,
            Inception v3 return aux logits in train mode; torchvision's recipes use 0.3-0.4).
    """

    def __init__(
        self,
        network: str = "resnet18",
        num_classes: int | None = None,
        head_classes: list[int] | None = None,
        small_input: bool = False,
        weights: str | None = None,
        trust_weights: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        aux_loss_weight: float = 0.3,
    ) -> None:
        super().__init__()
        if head_classes is not None:
            if num_classes is not None and num_classes != len(head_classes):
                raise ConfigError(
                    f"num_classes={num_classes} but head_classes has {len(head_classes)} entries: "
                    "give one of them or make them agree"
                )
            num_classes = len(head_classes)
        elif num_classes is not None:
            head_classes = list(range(num_classes))
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "trust_weights"])
        self.trust_weights = trust_weights
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.head_classes: list[int] | None = head_classes
        self.pruning_plan: dict[str, Any] | None = None
        self.base_head_classes: list[int] | None = None
        self.weights_source: str | None = weights
        self.base_weights: str | None = None
        self.pruning_timings: dict[str, float] = {}
        self.retrain_epochs = 0
        # epochs trained when the checkpoint under test was written (None: not from a checkpoint)
        self.checkpoint_epochs: int | None = None
        # accuracy right after removal / after BatchNorm recalibration (the PruningCallback's)
        self.accuracy_stages: dict[str, Any] = {}
        self.rows: list[int] | None = None
        self.class_names: list[str] | None = None
        self.network: nn.Module | None = None
        if num_classes is not None:
            self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        hp = self.hparams
        self.network = build_network(
            hp.network, num_classes, hp.small_input, hp.weights, self.trust_weights
        )
        # the weights now live in this module's state: checkpoints must not depend on the file
        self.hparams.update(num_classes=num_classes, head_classes=self.head_classes, weights=None)

    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        class_indices = getattr(datamodule, "class_indices", None)
        if self.network is None:
            if class_indices is None:
                raise ConfigError(
                    "num_classes is not set and there is no DataModule to take it from"
                )
            self.head_classes = list(class_indices)
            self._build(len(self.head_classes))
        self.configure_task(class_indices, getattr(datamodule, "class_names", None))

    def configure_task(
        self, class_indices: list[int] | None, class_names: list[str] | None = None
    ) -> None:
        """Set the k-way task: which head rows the subset labels 0..k-1 map to; builds metrics."""
        assert self.head_classes is not None
        indices = list(self.head_classes) if class_indices is None else list(class_indices)
        self.rows = target_rows(self.head_classes, indices)
        self.class_names = list(class_names) if class_names else [str(c) for c in indices]
        k = len(self.rows)
        for stage in ("val", "test"):
            scalars: dict[str, Any] = {
                "acc": MulticlassAccuracy(k, average="micro"),
                "acc_macro": MulticlassAccuracy(k, average="macro"),
            }
            if k > 5:
                scalars["acc_top5"] = MulticlassAccuracy(k, top_k=5, average="micro")
            setattr(self, f"{stage}_metrics", MetricCollection(scalars, prefix=f"{stage}/"))
            setattr(self, f"{stage}_per_class", MulticlassAccuracy(k, average=None))
        self.to(self.device)

    @override
    def forward(self, x: Tensor) -> Tensor:
        """Logits of the whole head."""
        assert self.network is not None, "the network is built in setup() when num_classes is None"
        return self.network(x)

    def subset_logits(self, x: Tensor) -> Tensor:
        """Logits of the selected classes' rows, in subset-label order (main head only)."""
        return self._heads(x)[0]

    def _heads(self, x: Tensor) -> list[Tensor]:
        # GoogLeNet / Inception v3 return (logits, aux logits...) in train mode
        out = self(x)
        heads = [out] if isinstance(out, Tensor) else [t for t in out if t is not None]
        return [h if self.rows is None else h[:, self.rows] for h in heads]

    def _shared_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        images, labels = batch
        logits, *aux = self._heads(images)
        smoothing = self.hparams.label_smoothing
        loss = nn.functional.cross_entropy(logits, labels, label_smoothing=smoothing)
        for extra in aux:  # torchvision's reference recipe weights each auxiliary head
            loss = loss + self.hparams.aux_loss_weight * nn.functional.cross_entropy(
                extra, labels, label_smoothing=smoothing
            )
        return loss, logits, labels

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits, labels = self._shared_step(batch)
        acc = (logits.argmax(1) == labels).float().mean()
        # sync_dist: under DDP the epoch value is the mean over all ranks, not rank zero's share
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, on_step=False, sync_dist=True)
        self.log("train/acc", acc, prog_bar=True, on_epoch=True, on_step=False, sync_dist=True)
        return loss

    def _eval_step(self, stage: str, batch: tuple[Tensor, Tensor]) -> None:
        loss, logits, labels = self._shared_step(batch)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits, labels)
        getattr(self, f"{stage}_per_class").update(logits, labels)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=True, on_step=False, sync_dist=True)
        self.log_dict(metrics, prog_bar=True, on_epoch=True, on_step=False)

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _log_per_class(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_per_class")
        values = metric.compute().tolist()
        metric.reset()
        assert self.class_names is not None
        for name, value in zip(self.class_names, values):
            # compute() already synced across ranks, so sync_dist only averages equal values
            self.log(f"{stage}/acc_class/{name}", value, sync_dist=True)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_per_class("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_per_class("test")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.subset_logits(images).softmax(1)

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/acc"
        return {"optimizer": optimizer, "lr_scheduler": config}

    # --- pruned structure -------------------------------------------------------------------

    def apply_pruning_plan(self, plan: dict[str, Any]) -> None:
        """Prune the hosted network by a plan (dict form) and take over its class-subset head.

        Args:
            plan: ``PruningPlan.to_dict()``; replaying it on a fresh network of the same
                architecture reproduces the pruned structure, which is how checkpoints load.
        """
        from capl.pruning import PruningPlan, apply_plan

        assert self.network is not None and self.head_classes is not None
        pruning_plan = PruningPlan.from_dict(plan)
        self.base_head_classes = list(self.head_classes)
        apply_plan(self.network, pruning_plan)
        if pruning_plan.head_rows is not None:
            self.head_classes = [self.head_classes[r] for r in pruning_plan.head_rows]
        self.pruning_plan = plan
        self.hparams.update(
            num_classes=len(self.head_classes), head_classes=list(self.head_classes)
        )

    def record_pruning(self, timings: dict[str, float], stages: dict[str, Any]) -> None:
        """Keep what pruning cost and the accuracy stages it measured (saved in checkpoints).

        Args:
            timings: Seconds of ``selection``, ``removal`` and ``retraining`` (0 so far).
            stages: ``pruned`` / ``bn_recalibrated`` accuracy blocks.
        """
        self.pruning_timings = dict(timings)
        self.accuracy_stages = dict(stages)
        source = self.weights_source
        # the base is rebuilt from these weights for the benchmark, from any working directory
        self.base_weights = (
            str(Path(source).resolve()) if source and Path(source).is_file() else source
        )

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "network": self.hparams.network,
            "pruning_plan": self.pruning_plan,
            "base_head_classes": self.base_head_classes,
            "head_classes": self.head_classes,
            "base_weights": self.base_weights,
            "timings_s": self.pruning_timings,
            "retrain_epochs": self.retrain_epochs,
            "accuracy_stages": self.accuracy_stages,
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            return
        if saved["network"] != self.hparams.network:
            raise ConfigError(
                f"checkpoint holds a {saved['network']} but the model is configured as "
                f"{self.hparams.network}: set model.network: {saved['network']} or use another ckpt"
            )
        self.base_weights = saved.get("base_weights")
        self.pruning_timings = dict(saved.get("timings_s") or {})
        saved_epochs = int(saved.get("retrain_epochs") or 0)
        self.checkpoint_epochs = saved_epochs
        # in the process that trained, the fit's own count (the whole run) outlives the best
        # checkpoint's (the epochs done when it was written)
        self.retrain_epochs = max(self.retrain_epochs, saved_epochs)
        self.accuracy_stages = dict(saved.get("accuracy_stages") or self.accuracy_stages)
        plan = saved.get("pruning_plan")
        if plan is not None and plan != self.pruning_plan:
            # rebuild the architecture the plan was made on, then replay it
            self.head_classes = list(saved["base_head_classes"])
            self._build(len(self.head_classes))
            self.apply_pruning_plan(plan)
        self.head_classes = list(saved["head_classes"])
        self.hparams.update(
            num_classes=len(self.head_classes), head_classes=list(self.head_classes)
        )
        own = {k: v.shape for k, v in self.state_dict().items()}
        _fold_masks(checkpoint["state_dict"], own)
        self._check_shapes(own, checkpoint["state_dict"])
        if self._trainer is not None and self.rows is not None:
            datamodule = getattr(self.trainer, "datamodule", None)
            self.configure_task(
                getattr(datamodule, "class_indices", None), getattr(datamodule, "class_names", None)
            )

    @staticmethod
    def _check_shapes(own: dict[str, torch.Size], state: dict[str, Tensor]) -> None:
        theirs = {k: v.shape for k, v in state.items()}
        missing = sorted(set(own) - set(theirs))
        extra = sorted(set(theirs) - set(own))
        wrong = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
        if missing or extra or wrong:
            key = (wrong or missing or extra)[0]
            raise ConfigError(
                f"checkpoint does not match the configured model ({len(wrong)} shape mismatches, "
                f"{len(missing)} missing, {len(extra)} unexpected keys, e.g. {key}): check "
                "model.network, num_classes and small_input"
            )


def _fold_masks(state: dict[str, Tensor], own: dict[str, torch.Size]) -> None:
    """Turn ``<w>_orig``/``<w>_mask`` pairs into ``<w>`` where the module's masks are permanent."""
    for key in [k for k in state if k.endswith("_orig")]:
        name = key[: -len("_orig")]
        if name in own and f"{name}_mask" in state and key not in own:
            state[name] = state.pop(key) * state.pop(f"{name}_mask")
