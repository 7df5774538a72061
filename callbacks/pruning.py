"""PruningCallback: class-aware pruning before fit/test, a thin adapter over capl.pruning."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from capl.benchmark.base_cache import weights_hash
from capl.criteria import Criterion
from capl.errors import ConfigError
from capl.io import write_bytes_atomic, write_json_atomic
from capl.memo import evaluate_once, recalibrate_once
from capl.module import ImageClassifier
from capl.pruning import (
    PruningConfig,
    make_masks_permanent,
    make_plan,
    select_scores,
)
from capl.pruning.latency_table import LatencySpec, LatencyTable, network_latency_table
from capl.subset_data import SubsetData

log = logging.getLogger(__name__)

PLAN_FILE = "pruning_plan.json"


class PruningCallback(Callback):
    """Score, plan and physically prune the model on the DataModule's selected classes.

    Pruning runs in ``setup``: after the DataModule is set up and before the model is moved to
    its device and wrapped for distributed training (a structural change after the DDP wrap would
    break training silently). Under DDP every rank gathers statistics on its share of the
    calibration batches; the sums are all-reduced, rank zero makes the plan and broadcasts it, so
    every rank ends with the same architecture. Retraining is the fit itself; masks of
    unstructured/kernel criteria stay applied while training and are made permanent at the end.

    The plan is written to ``<log_dir>/pruning_plan.json``. A restarted or requeued job does not
    prune twice: the checkpoint carries the plan, and the module replays it on a freshly built
    base network before loading the weights.

    Args:
        criterion: What to remove (YAML: ``class_path: OCAP`` plus ``init_args``).
        ratio: Fraction in [0, 1) of prunable filters (or weights) to remove, or with ``target``
            the realised fraction of MACs/params to remove.
        scope: ``layer`` removes ``ratio`` of each layer; ``global`` ranks across layers.
        target: Prune until the realised ``macs`` or ``params`` reduction reaches ``ratio``, or
            (``latency``) until the latency predicted from a measured per-layer table drops by
            ``ratio``.
        ignore: Layer-name patterns (fnmatch) never pruned.
        skip_first: Number of leading convolutions never pruned.
        round_to: Keep channel counts multiples of this (hardware-friendly widths); ``auto``
            (default) picks the multiple for the device (on CPU 16 with AVX-512, else 8), ``null``
            keeps any width.
        min_channels: Channels every pruned layer keeps at least.
        layer_ratios: ``{fnmatch pattern: ratio}`` overriding ``ratio`` for the channel groups
            whose first conv matches (first pattern wins); needs ``scope: layer`` and no
            ``target``. ``capl-sensitivity`` writes one (``suggested_pruning.yaml``).
        cut_head: Replace the classifier by the selected classes' rows (weights copied).
        score_cache: Folder where scores are kept, keyed by the criterion's settings, the base
            network's weights, the classes and the calibration data; a sweep computes a
            criterion's scores once and reuses them for every ratio.
        bn_recalibration: After removal, reset the BatchNorm running statistics and re-estimate
            them on this many training batches of the selected classes (train-mode BatchNorm,
            no gradients, no weight change: EagleEye's adaptive BN); 0 turns it off.
        latency: Where latency is measured (backend, batch_size, threads, cache folder) for
            ``target: latency`` (default: ONNX Runtime, batch 32, torch's threads, no cache);
            given with another target, the plan still records its predicted latency. The
            per-layer table is measured once per network, input size, backend, batch size and
            thread count and kept in ``cache``; the time it takes counts as removal time.

    Right after removal (``pruned``) and after the recalibration (``bn_recalibrated``) the test
    accuracy is measured on the same k-way task as the benchmark; these stages travel with
    checkpoints into ``benchmark.json``'s ``accuracy_stages``.

    When ``capl test``/``capl fit`` is given a ``--ckpt_path`` whose checkpoint already carries a
    pruning plan, that plan is used (the module replays it while loading): no selection runs.
    """

    def __init__(
        self,
        criterion: Criterion,
        ratio: float = 0.5,
        scope: Literal["layer", "global"] = "layer",
        target: Literal["macs", "params", "latency"] | None = None,
        ignore: list[str] | None = None,
        skip_first: int = 0,
        round_to: int | Literal["auto"] | None = "auto",
        min_channels: int = 1,
        layer_ratios: dict[str, float] | None = None,
        cut_head: bool = True,
        score_cache: str | None = None,
        bn_recalibration: int = 0,
        latency: LatencySpec | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(criterion, Criterion):
            raise ConfigError(
                "criterion must be a capl criterion (e.g. class_path: OCAP), got "
                f"{type(criterion).__name__}"
            )
        self.criterion = criterion
        self.config = PruningConfig(
            ratio=ratio,
            scope=scope,
            target=target,
            ignore=list(ignore or []),
            skip_first=skip_first,
            round_to=round_to,
            min_channels=min_channels,
            layer_ratios=layer_ratios,
        )
        self.cut_head = cut_head
        if isinstance(bn_recalibration, bool) or not isinstance(bn_recalibration, int):
            raise ConfigError(f"bn_recalibration must be an integer, got {bn_recalibration!r}")
        if bn_recalibration < 0:
            raise ConfigError(
                f"bn_recalibration must be >= 0 (batches; 0 = off), got {bn_recalibration}"
            )
        self.bn_recalibration = bn_recalibration
        self.score_cache = score_cache
        self.latency = LatencySpec() if latency is None and target == "latency" else latency
        self.scores_from_cache = False
        self.base_network: nn.Module | None = None
        self.base_head_classes: list[int] | None = None
        self.plan: dict[str, Any] | None = None
        # set by the capl CLI: (--ckpt_path, its plan); Lightning restores it only after setup
        self.checkpoint_plan: tuple[str, dict[str, Any]] | None = None
        self._fit_started: float | None = None
        self._retrained_before = 0.0
        self._last_evaluation: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in ("fit", "test", "validate"):
            return
        if not isinstance(pl_module, ImageClassifier):
            raise ConfigError("PruningCallback works with capl's ImageClassifier model")
        if self.plan is not None:  # fit then test in one process: already pruned
            return
        datamodule = trainer.datamodule
        if not isinstance(datamodule, SubsetData):
            raise ConfigError("PruningCallback needs a capl ClassSubsetDataModule (data: ...)")
        pl_module.setup(stage)  # builds the network and the k-way task if not yet done
        if self.checkpoint_plan is not None:
            self._use_checkpoint_plan(*self.checkpoint_plan)
            return
        network = pl_module.network
        assert network is not None and pl_module.rows is not None
        self.base_network = copy.deepcopy(network).cpu()
        self.base_head_classes = list(pl_module.head_classes or [])
        device = trainer.strategy.root_device
        network.to(device)
        example = torch.zeros(1, *datamodule.input_shape, device=device)

        start = time.perf_counter()
        scores = self._select(trainer, network, datamodule, pl_module.rows)
        selection = time.perf_counter() - start

        start = time.perf_counter()
        plan = self._plan(trainer, pl_module, scores, example)
        pl_module.apply_pruning_plan(plan)
        removal = time.perf_counter() - start
        pl_module.configure_task(datamodule.class_indices, datamodule.class_names)
        stages = self._after_removal(pl_module, datamodule)
        assert pl_module.network is not None
        pl_module.network.cpu()

        self.plan = plan
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if trainer.is_global_zero and log_dir:
            write_json_atomic(Path(log_dir) / PLAN_FILE, plan)
        timings = {"selection": selection, "removal": removal, "retraining": 0.0}
        pl_module.record_pruning(timings, stages)
        self._log_removal(plan, selection, removal)

    def _use_checkpoint_plan(self, ckpt_path: str, plan: dict[str, Any]) -> None:
        self.plan = plan
        rank_zero_info(
            f"capl: {ckpt_path} carries its pruning plan "
            f"({(plan.get('criterion') or {}).get('name')}, ratio "
            f"{(plan.get('config') or {}).get('ratio')}): using it, no new selection"
        )

    def _plan(
        self,
        trainer: Trainer,
        pl_module: ImageClassifier,
        scores: dict[str, Tensor],
        example: Tensor,
    ) -> dict[str, Any]:
        """The plan as a dict, made on rank zero and broadcast to every rank."""
        network = pl_module.network
        assert network is not None and pl_module.rows is not None
        plan = None
        if trainer.is_global_zero:
            head_rows = list(pl_module.rows) if self.cut_head else None
            plan = make_plan(
                network,
                self.criterion,
                scores,
                self.config,
                example,
                head_rows=head_rows,
                network=pl_module.hparams.network,
                latency=self._latency_table(network, example),
            ).to_dict()
        return trainer.strategy.broadcast(plan, src=0)

    def _log_removal(self, plan: dict[str, Any], selection: float, removal: float) -> None:
        report = plan.get("report", {})
        removed = ", ".join(
            f"{key} {report.get(key + '_removed_fraction', 0.0):.1%}"
            for key in ("channels", "params", "macs", "nonzero_params")
        )
        rank_zero_info(
            f"capl: pruned with {type(self.criterion).__name__} ({self.config}): removed "
            f"{removed}; selection {selection:.2f}s, removal {removal:.2f}s"
        )

    def _after_removal(self, module: ImageClassifier, datamodule: SubsetData) -> dict[str, Any]:
        """Accuracy right after removal, BatchNorm recalibration, accuracy after it."""
        network = module.network
        assert network is not None and module.rows is not None

        def evaluate() -> dict[str, Any]:
            loader = datamodule.test_dataloader()
            return evaluate_once(network, loader, module.rows, datamodule.class_names)

        # a sweep's points that prune to the same network share these passes (capl.memo)
        last = evaluate()
        stages: dict[str, Any] = {"pruned": last}
        if self.bn_recalibration:
            used = recalibrate_once(network, datamodule.train_dataloader(), self.bn_recalibration)
            last = evaluate()
            stages["bn_recalibrated"] = {**last, "batches": used}
            rank_zero_info(f"capl: BatchNorm statistics re-estimated on {used} training batches")
        device = next(network.parameters()).device
        signature = _evaluated(network, module.rows, datamodule, device)
        self._last_evaluation = (signature, copy.deepcopy(last))
        return stages

    def known_accuracy(
        self, module: ImageClassifier, datamodule: SubsetData, device: str | torch.device
    ) -> dict[str, Any] | None:
        """The last stage's test accuracy, if ``module``'s network is what was evaluated then.

        The benchmark evaluates the model under test on the same k-way task; after a prune-only
        run that is the network measured right after removal (or after the recalibration).
        Equal weights (a hash of the state dict), logit rows, DataModule and device give the
        same result, so it is not measured twice; anything else (retrained or restored weights)
        returns ``None``.

        Returns:
            A copy of :func:`capl.evaluation.evaluate_subset`'s result, or ``None``.
        """
        if self._last_evaluation is None or module.network is None or module.rows is None:
            return None
        signature, result = self._last_evaluation
        now = _evaluated(module.network, module.rows, datamodule, torch.device(device))
        return copy.deepcopy(result) if now == signature else None

    def _latency_table(self, network: nn.Module, example: Tensor) -> LatencyTable | None:
        if self.latency is None:
            return None
        round_to = self.config.resolved_round_to(self.latency.device)
        return network_latency_table(network, example, self.latency, round_to)

    def _select(
        self, trainer: Trainer, network: nn.Module, datamodule: SubsetData, rows: list[int]
    ) -> dict[str, Tensor]:
        cache = self._cache_path(network, datamodule, trainer.world_size)
        if cache is not None and cache.is_file():
            self.scores_from_cache = True
            return torch.load(cache, map_location="cpu", weights_only=True)
        world, rank = trainer.world_size, trainer.global_rank
        # a loader built inside a hook is not sharded by Lightning: take every world-th batch
        shard = (b for i, b in enumerate(datamodule.calibration_dataloader()) if i % world == rank)

        def all_ranks(stats: dict[str, Tensor]) -> dict[str, Tensor]:
            device = trainer.strategy.root_device
            return {
                k: trainer.strategy.reduce(v.to(device), reduce_op="sum")
                for k, v in sorted(stats.items())
            }

        scores = select_scores(
            self.criterion, network, shard, rows, reduce=all_ranks if world > 1 else None
        )
        if cache is not None and trainer.is_global_zero:
            buffer = io.BytesIO()
            torch.save({k: v.detach().cpu() for k, v in scores.items()}, buffer)
            write_bytes_atomic(cache, buffer.getvalue())
        return scores

    def _cache_path(
        self, network: nn.Module, datamodule: SubsetData, world_size: int
    ) -> Path | None:
        if self.score_cache is None:
            return None
        digest = hashlib.sha256()
        key = {
            "criterion": self.criterion.settings(),
            "classes": list(datamodule.class_indices),
            "dataset": datamodule.name,
            "calibration": [datamodule.calibration_samples_per_class, datamodule.seed],
            "input_shape": list(datamodule.input_shape),
            "world_size": world_size,
        }
        digest.update(json.dumps(key, sort_keys=True, default=str).encode())
        for name, tensor in network.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        name = f"{type(self.criterion).__name__}-{digest.hexdigest()[:20]}.pt"
        return Path(self.score_cache) / name

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # on resume the module's timings were restored from the checkpoint: keep counting
        self._fit_started = time.perf_counter()
        timings = pl_module.pruning_timings if isinstance(pl_module, ImageClassifier) else {}
        self._retrained_before = float(timings.get("retraining", 0))

    def _stamp_retraining(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._fit_started is None or not isinstance(pl_module, ImageClassifier):
            return
        elapsed = time.perf_counter() - self._fit_started
        pl_module.pruning_timings["retraining"] = self._retrained_before + elapsed
        # epochs begun: a checkpoint written in epoch e's validation has trained e + 1 epochs
        pl_module.retrain_epochs = trainer.fit_loop.epoch_progress.current.started

    @override
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # runs before the module's own hook, which stores the timings in the checkpoint
        self._stamp_retraining(trainer, pl_module)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stamp_retraining(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert isinstance(pl_module, ImageClassifier) and pl_module.network is not None
        make_masks_permanent(pl_module.network)


def _evaluated(
    network: nn.Module, rows: list[int], datamodule: SubsetData, device: torch.device
) -> tuple[Any, ...]:
    """What decides an evaluation: weights, logit rows, DataModule object and device type."""
    return (weights_hash(network), tuple(rows), id(datamodule), device.type)
