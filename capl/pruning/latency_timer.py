"""Timing for latency tables: single layers and the whole network on the table's backend."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from capl.benchmark import (
    export_onnx,
    measure_latency_onnxruntime,
    measure_latency_torch,
    profiled_runs,
)

if TYPE_CHECKING:
    from capl.pruning.latency_table import LatencySpec

_LAYOUT_OPS = ("Reorder", "Memcpy")  # ORT's layout and host-device copies, not the layer's work
KERNELS = "kernels"
"""``layers_timed`` of a table whose single layers are timed by their own ORT kernels."""


def layers_timed(spec: LatencySpec) -> str:
    """How a table for ``spec`` times a single layer: :data:`KERNELS` or ``"wall clock"``.

    ORT's profiler times CUDA nodes by their launch, not their run, so only ONNX Runtime on the
    CPU is timed by its kernels.
    """
    kernels = spec.backend == "onnxruntime" and torch.device(spec.device).type == "cpu"
    return KERNELS if kernels else "wall clock"


class TableTimer:
    """Median latency of single layers and of the whole network on the spec's backend.

    On ONNX Runtime on the CPU a single layer's latency is its own kernels' time from ORT's
    profiler (layout reorders and copies left out); everything else is timed by the clock.
    """

    def __init__(self, spec: LatencySpec, threads: int, workdir: Path) -> None:
        """Time with ``spec``'s backend, batch size and device on ``threads`` threads.

        Args:
            spec: The table's backend, batch size, device, warm-up and repeats.
            threads: Intra-op threads.
            workdir: Folder for the ONNX files of the timed layers.
        """
        self.spec, self.threads, self.workdir = spec, threads, workdir
        self.kernels = layers_timed(spec) == KERNELS
        self.count = 0

    def layer(self, module: nn.Module, shape: tuple[int, ...], inp: int, out: int) -> float:
        """Milliseconds of a fresh copy of ``module`` with ``inp`` inputs and ``out`` outputs.

        Args:
            module: The network's Conv2d or Linear (its settings are copied, not its weights).
            shape: Its input shape in the network, without the batch dimension.
            inp: Kept input channels.
            out: Kept output channels.
        """
        torch.manual_seed(0)
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups == module.in_channels == module.out_channels > 1
            groups = out if depthwise else module.groups
            layer: nn.Module = nn.Conv2d(
                inp, out, module.kernel_size, module.stride, module.padding, module.dilation,
                groups, module.bias is not None, module.padding_mode,
            )  # fmt: skip
        else:
            layer = nn.Linear(inp, out, module.bias is not None)
        return self._time(layer.eval(), (inp, *shape[1:]), kernels=self.kernels)

    def network(self, model: nn.Module, shape: tuple[int, ...]) -> float:
        """Milliseconds of the whole ``model`` at input ``shape`` (without the batch)."""
        return self._time(model, tuple(shape), exporter=self.spec.exporter)

    def _time(
        self,
        net: nn.Module,
        shape: tuple[int, ...],
        exporter: str = "torchscript",
        kernels: bool = False,
    ) -> float:
        spec = self.spec
        protocol = {"warmup": spec.warmup, "repeats": spec.repeats, "min_time_s": 0.0}
        if spec.backend == "torch":
            return measure_latency_torch(
                net, shape, spec.batch_size, spec.device, threads=self.threads, **protocol
            )["median_ms"]
        self.count += 1
        path = self.workdir / f"layer{self.count}.onnx"
        export_onnx(net, path, shape, exporter=exporter)  # type: ignore[arg-type]
        if kernels:
            return self._kernels_ms(path, shape)
        return measure_latency_onnxruntime(
            path, shape, spec.batch_size, self.threads, spec.device, **protocol
        )["median_ms"]

    def _kernels_ms(self, path: Path, shape: tuple[int, ...]) -> float:
        # ORT wraps a lone conv in layout reorders (NCHW <-> its blocked NCHWc) that cost as
        # much as the conv at wide, high-resolution shapes; inside the network most tensors
        # stay blocked, so timing them made narrow plans look slow (predicted 3.1x against a
        # measured 3.9x for MobileNetV3-L cut 4x). The reorders the network does keep are
        # in the whole network's measured time, and so in rest_ms.
        spec = self.spec
        runs = profiled_runs(
            path, shape, spec.batch_size, self.threads, spec.device, spec.warmup, spec.repeats
        )
        return statistics.median(
            sum(ms for (op, _), ms in run.items() if not op.startswith(_LAYOUT_OPS)) for run in runs
        )
