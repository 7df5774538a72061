"""BenchmarkCallback: what pruning bought, measured on the same k-way task, into benchmark.json."""

from __future__ import annotations

import copy
import functools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import nn
from typing_extensions import override

import capl
from capl.benchmark import (
    BACKENDS,
    environment_info,
    format_table,
    paired_latency,
    per_layer_diff,
    profile_model,
)
from capl.benchmark.group import LatencyJob
from capl.benchmark.record import AccuracyStages, BenchmarkRecord, build_record, run_info
from capl.benchmark.record import accuracy_stages as record_stages
from capl.benchmark.tensorboard import log_benchmark
from capl.callbacks.benchmark_sharing import ONNX_FILE_KEY, base_key, cached_base_block, complete
from capl.callbacks.pruning import PruningCallback
from capl.errors import ConfigError
from capl.evaluation import evaluate_subset, target_rows
from capl.io import check_writable, write_json_atomic
from capl.models import build_network
from capl.module import ImageClassifier
from capl.pruning import make_masks_permanent
from capl.pruning.latency_table import latency_prediction

log = logging.getLogger(__name__)

BENCHMARK_FILE = "benchmark.json"


class BenchmarkCallback(Callback):
    """Benchmark the model under test against the base model it came from.

    At the end of ``capl test`` (rank zero; the test metrics themselves are computed on every
    rank by the module) both models are evaluated on the DataModule's test split with logits
    restricted to the selected classes, then profiled: MACs, parameters, size, latency per
    backend and batch size, peak memory. The result is written atomically to
    ``<log_dir>/benchmark.json`` and logged to TensorBoard (scalars, hparams, figures).

    The base model is rebuilt from the base weights recorded with the pruning plan (also in
    pruned checkpoints), else it is the PruningCallback's in-memory copy (a base without a
    weights file), else the model itself (an unpruned run: before == after).

    Args:
        batch_sizes: Batch sizes to time.
        backends: Latency backends, among ``torch`` and ``onnxruntime``.
        ort_threads: ONNX Runtime intra-op threads (recorded); default torch's thread count.
        warmup: Warm-up iterations before timing.
        repeats: Minimum timed iterations.
        min_time_s: Minimum total timed seconds per measurement.
        device: Device for latency and memory (``cpu``/``cuda``); default the trainer's device.
        output: Where to write the JSON; default ``<trainer log_dir>/benchmark.json``.
        run_name: A name recorded under ``run.name`` (sweeps put the grid point id here).
        exporter: ONNX exporter: ``auto`` (dynamo, falling back to TorchScript), ``dynamo`` or
            ``torchscript`` (several times faster to export; fails on some adaptive pools).
        rounds: The base and the pruned model are timed in this many alternating rounds (ABBA
            order), so changes in machine load hit both alike; ``None`` (the default): one
            round per timed run, which spreads each model's runs evenly over the measurement
            and halved the spread of speed-ups against 6 rounds on a noisy VM
            (``scripts/bench_interleaving.py``, benchmarks/efficiency.md). The defaults (3
            warm-up runs, 24 timed runs, at least 1 s per model) time ResNet-18 at 224 x 224
            and batch 32 about as long as 4 rounds of 20 did; every latency carries ``busy``
            when its rounds (judged in at most six groups of consecutive rounds) disagree.
        input_size: ``[C, H, W]`` at which MACs, latency and memory are measured (e.g. the
            deployment resolution ``[3, 224, 224]``); default the dataset's input shape.
            Accuracy is always measured on the dataset's images. Both shapes are recorded under
            ``input_shape`` in benchmark.json.
        base_cache: A folder where the base model's block (accuracy, per-class accuracy, MACs,
            parameters, sizes, peak memory, ONNX export; not latency) is kept after the first
            run, keyed by the base weights, head classes, data settings, input size and these
            options (:mod:`capl.benchmark.base_cache`); later runs with the same key read it
            instead of measuring the base again. ``capl-sweep`` sets ``OUTPUT/base_bench``.
        latency: ``paired`` times the base and the model under test here, in alternating
            rounds. ``deferred`` leaves both ``latency_ms`` blocks empty and keeps the model in
            :attr:`pending` (a :class:`~capl.benchmark.group.LatencyJob`) for ``capl-sweep``,
            which times the models of a group of points against their base in one interleaved
            run and completes each benchmark.json; the model's ONNX export and peak memory
            are measured there too, once per architecture.
    """

    def __init__(
        self,
        batch_sizes: list[int] | None = None,
        backends: list[str] | None = None,
        ort_threads: int | None = None,
        warmup: int = 3,
        repeats: int = 24,
        min_time_s: float = 1.0,
        device: str | None = None,
        output: str | None = None,
        run_name: str | None = None,
        exporter: Literal["auto", "dynamo", "torchscript"] = "auto",
        rounds: int | None = None,
        input_size: list[int] | None = None,
        base_cache: str | None = None,
        latency: Literal["paired", "deferred"] = "paired",
    ) -> None:
        super().__init__()
        self.batch_sizes = list(batch_sizes or [1, 32])
        self.backends = list(backends or BACKENDS)
        unknown = sorted(set(self.backends) - set(BACKENDS))
        if unknown:
            raise ConfigError(f"backends: unknown {unknown}: use {' and/or '.join(BACKENDS)}")
        if any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch_sizes must be >= 1, got {self.batch_sizes}")
        if warmup < 0 or repeats < 1 or min_time_s < 0:
            raise ConfigError("need warmup >= 0, repeats >= 1 and min_time_s >= 0")
        if ort_threads is not None and ort_threads < 1:
            raise ConfigError(f"ort_threads must be >= 1, got {ort_threads}")
        self.ort_threads = ort_threads
        self.warmup, self.repeats, self.min_time_s = warmup, repeats, min_time_s
        self.device = device
        if output is not None:  # refused now, not after the whole run
            if Path(output).is_dir():
                raise ConfigError(
                    f"BenchmarkCallback output {output} is a folder: give a file path such as "
                    f"{Path(output) / BENCHMARK_FILE}"
                )
            check_writable(Path(output).parent, f"BenchmarkCallback output {output}: folder")
        self.output = output
        self.run_name = run_name
        self.exporter = exporter
        if rounds is not None and rounds < 1:
            raise ConfigError(
                f"rounds must be >= 1 (or null: one round per timed run), got {rounds}"
            )
        self.rounds = rounds
        if input_size is not None and (
            len(input_size) != 3 or any(isinstance(v, bool) or int(v) < 1 for v in input_size)
        ):
            raise ConfigError(f"input_size must be [C, H, W] with positive sizes, got {input_size}")
        self.input_size = None if input_size is None else [int(v) for v in input_size]
        if latency not in ("paired", "deferred"):
            raise ConfigError(f"latency must be paired or deferred, got {latency!r}")
        self.latency = latency
        if base_cache is not None:
            check_writable(Path(base_cache), "BenchmarkCallback base_cache")
        self.base_cache = base_cache
        self.result: dict[str, Any] | None = None
        self.pending: LatencyJob | None = None

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not isinstance(pl_module, ImageClassifier):
            raise ConfigError("BenchmarkCallback works with capl's ImageClassifier model")
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return
        output = self._output_path(trainer)  # trainer.log_dir is a collective: all ranks
        self._benchmark(trainer, pl_module, output)

    @rank_zero_only
    def _benchmark(self, trainer: Trainer, module: ImageClassifier, output: Path) -> None:
        datamodule = trainer.datamodule
        input_shape = self._input_shape(tuple(datamodule.input_shape))
        device = self.device or ("cuda" if trainer.strategy.root_device.type == "cuda" else "cpu")
        pruning = _find_pruning_callback(trainer)
        nets = self._nets(module, pruning)
        known = pruning.known_accuracy(module, datamodule, device) if pruning else None
        deferred = self.latency == "deferred"
        key = None
        if self.base_cache is not None or deferred:
            options = {"exporter": self.exporter, **self._timing(device)}
            key = base_key(nets["before"], datamodule, input_shape, options)
        with tempfile.TemporaryDirectory(prefix="capl-onnx-") as tmp:
            # a deferred run keeps an uncached base export next to benchmark.json until timed
            workdir = output.parent if deferred else Path(tmp)
            blocks, onnx = self._measure(nets, datamodule, input_shape, device, workdir, key, known)
            if not deferred:
                # both models timed together, interleaved, so the speed-up is not machine noise
                models = [net for net, _ in nets.values()]
                latencies = paired_latency(models, onnx, input_shape, **self._timing(device))
                for block, latency in zip(blocks.values(), latencies):
                    block["latency_ms"] = latency
        result = self._record(module, datamodule, nets, blocks, output.parent, input_shape)
        path = write_json_atomic(output, result)
        self.result = dict(result)
        if deferred:
            assert key is not None
            self.pending = self._job(key, module, nets, onnx, input_shape, device, output, trainer)
            rank_zero_info(f"capl benchmark ({path}): latency deferred to a group timing run")
            return
        self._log(trainer, self.result)
        rank_zero_info(
            f"capl benchmark ({path}):\n{format_table(result['before'], result['after'])}"
        )

    def _input_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The benchmark's ``(C, H, W)``: ``input_size``, else the data's, channels agreeing."""
        input_shape = tuple(self.input_size or data_shape)
        if input_shape[0] != data_shape[0]:
            raise ConfigError(
                f"input_size {list(input_shape)} has {input_shape[0]} channels but the data has "
                f"{data_shape[0]}: use [{data_shape[0]}, H, W]"
            )
        return input_shape

    def _nets(
        self, module: ImageClassifier, pruning: PruningCallback | None
    ) -> dict[str, tuple[nn.Module, list[int]]]:
        """``before`` (the base) and ``after`` (the model under test, masks made permanent)."""
        assert module.head_classes is not None
        after_net = copy.deepcopy(module.network).cpu()
        make_masks_permanent(after_net)
        return {
            "before": self._base_model(module, pruning),
            "after": (after_net, list(module.head_classes)),
        }

    def _measure(
        self,
        nets: dict[str, tuple[nn.Module, list[int]]],
        datamodule: Any,
        input_shape: tuple[int, ...],
        device: str,
        workdir: Path,
        key: str | None,
        known: dict[str, Any] | None = None,
    ) -> tuple[dict[str, dict[str, Any]], list[str | None]]:
        """Each model's block but latency (the base's from ``base_cache``), and its ONNX file.

        ``known``: the model under test's accuracy if already measured (a prune-only run).
        """

        def measure(name: str, folder: Path) -> dict[str, Any]:
            accuracy = known if name == "after" else None
            return self._block(nets[name], datamodule, input_shape, device, folder, name, accuracy)

        if self.base_cache is None:
            before = measure("before", workdir)
        else:
            assert key is not None
            before = cached_base_block(self.base_cache, key, lambda f: measure("before", f))
        blocks = {"before": before, "after": measure("after", workdir)}
        onnx: list[str | None] = [block.pop(ONNX_FILE_KEY) for block in blocks.values()]
        for block in blocks.values():
            if block.get("onnx"):
                block["onnx"]["path"] = None  # a temporary or cached file, not the run's output
        return blocks, onnx

    def _block(
        self,
        net_head: tuple[nn.Module, list[int]],
        datamodule: Any,
        input_shape: tuple[int, ...],
        device: str,
        workdir: Path,
        name: str,
        accuracy: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Accuracy on the selected classes (unless given) and the profile (no latency)."""
        net, head = net_head
        rows = target_rows(head, datamodule.class_indices)
        net.to(device)
        try:
            if accuracy is None:
                loader = datamodule.test_dataloader()
                accuracy = evaluate_subset(net, loader, rows, datamodule.class_names)
            block = {
                **accuracy,
                **self._profile(net, input_shape, device, workdir, name),
            }
        finally:
            net.cpu()
        block[ONNX_FILE_KEY] = str(workdir / f"{name}.onnx") if block.get("onnx") else None
        return block

    def _timing(self, device: str) -> dict[str, Any]:
        """The latency protocol's options (:func:`capl.benchmark.paired_latency`)."""
        return {
            "batch_sizes": self.batch_sizes,
            "backends": self.backends,
            "device": device,
            "ort_threads": self._ort_threads(),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "min_time_s": self.min_time_s,
            "rounds": self.rounds,
        }

    def _record(
        self,
        module: ImageClassifier,
        datamodule: Any,
        nets: dict[str, tuple[nn.Module, list[int]]],
        blocks: dict[str, dict[str, Any]],
        workdir: Path,
        input_shape: tuple[int, ...],
    ) -> BenchmarkRecord:
        plan = module.pruning_plan or {}
        before, after = blocks["before"], blocks["after"]
        return build_record(
            version=capl.__version__,
            run=run_info(str(workdir), self.run_name),
            model=module.hparams.network,
            dataset=getattr(datamodule, "name", type(datamodule).__name__),
            classes={
                "indices": list(datamodule.class_indices),
                "names": list(datamodule.class_names),
            },
            plan=plan,
            seed=_seed(),
            retrain_epochs=module.retrain_epochs,
            best_epoch=module.checkpoint_epochs if module.retrain_epochs else None,
            input_shape={
                "accuracy": list(datamodule.input_shape),
                "benchmark": list(input_shape),
            },
            stages=accuracy_stages(before, after, module),
            before=before,
            after=after,
            per_layer=per_layer_diff(nets["before"][0], nets["after"][0]),
            timings=dict(getattr(module, "pruning_timings", None) or {}),
            environment=environment_info(ort_threads=self._ort_threads()),
            # a plan made with a latency table: its predicted speed-up next to the measured one
            latency_prediction=latency_prediction(plan, before, after),
        )

    def _job(
        self,
        key: str,
        module: ImageClassifier,
        nets: dict[str, tuple[nn.Module, list[int]]],
        onnx: list[str | None],
        input_shape: tuple[int, ...],
        device: str,
        output: Path,
        trainer: Trainer,
    ) -> LatencyJob:
        """This run's deferred latency, completed by :func:`capl.benchmark.group.time_jobs`."""
        assert self.result is not None
        # the cached base export is shared; an uncached one goes once timed (the group run
        # exports the model under test itself)
        own = [] if self.base_cache is not None else onnx[:1]
        finish = functools.partial(
            complete,
            copy.deepcopy(self.result),
            output,
            copy.deepcopy(module.pruning_plan),
            list(trainer.loggers),
            [Path(path) for path in own if path is not None],
        )
        return LatencyJob(
            key=key,
            base=nets["before"][0],
            base_onnx=onnx[0],
            model=nets["after"][0],
            timing={"input_shape": list(input_shape), **self._timing(device)},
            finish=finish,
            name=self.run_name or str(output.parent),
            exporter=self.exporter,
        )

    def _ort_threads(self) -> int:
        return self.ort_threads or torch.get_num_threads()

    def _profile(
        self, net: nn.Module, input_shape: tuple[int, ...], device: str, workdir: Path, name: str
    ) -> dict:
        return profile_model(
            net,
            input_shape,
            batch_sizes=self.batch_sizes,
            backends=self.backends,
            device=device,
            ort_threads=self._ort_threads(),
            workdir=workdir,
            warmup=self.warmup,
            repeats=self.repeats,
            min_time_s=self.min_time_s,
            exporter=self.exporter,
            latency=False,
            # a deferred model's export and memory are measured once per architecture
            shapes=not (self.latency == "deferred" and name == "after"),
            name=name,  # "before" / "after": the ONNX file and the progress line
        )

    def _base_model(
        self, module: ImageClassifier, pruning: PruningCallback | None
    ) -> tuple[nn.Module, list[int]]:
        # The base weights recorded with the plan come first: when a pruned checkpoint is
        # restored after a PruningCallback ran in setup, that callback's copy is not the base.
        if module.pruning_plan is not None and module.base_weights:
            head = list(module.base_head_classes or [])
            net = build_network(
                module.hparams.network,
                len(head),
                module.hparams.small_input,
                module.base_weights,
                module.trust_weights,
            )
            return net, head
        if pruning is not None and pruning.base_network is not None:
            return copy.deepcopy(pruning.base_network), list(pruning.base_head_classes or [])
        return copy.deepcopy(module.network).cpu(), list(module.head_classes or [])

    def _output_path(self, trainer: Trainer) -> Path:
        if self.output:
            return Path(self.output)
        return Path(trainer.log_dir or trainer.default_root_dir) / BENCHMARK_FILE

    def _log(self, trainer: Trainer, result: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            log_benchmark(logger, result)


def accuracy_stages(
    before: dict[str, Any], after: dict[str, Any], module: ImageClassifier
) -> AccuracyStages:
    """Accuracy at each stage on the same k-way task: base, pruned, bn_recalibrated, retrained.

    ``pruned`` and ``bn_recalibrated`` were measured by the PruningCallback right after removal
    (they travel with checkpoints); ``retrained`` is the model under test when it was trained
    after pruning; ``chance`` is ``1 / k`` (see :func:`capl.benchmark.record.accuracy_stages`).
    """
    recorded = None if module.pruning_plan is None else module.accuracy_stages
    return record_stages(before, after, recorded, retrained=module.retrain_epochs > 0)


def _find_pruning_callback(trainer: Trainer) -> PruningCallback | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, PruningCallback)), None)


def _seed() -> int | None:
    """The seed ``seed_everything`` set for this run (Lightning exports it to workers this way)."""
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value is not None else None


__all__ = ["BENCHMARK_FILE", "BenchmarkCallback", "accuracy_stages"]
