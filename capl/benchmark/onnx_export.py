"""ONNX export of the deployable model (masks made permanent), written atomically.

Exporter choice: the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, via
``torch.export`` and onnxscript) is the default. On this stack it exports resnet18,
mobilenet_v3_large, efficientnet_b0 and vgg16_bn at 32x32 with a dynamic batch, whereas the
legacy TorchScript exporter (``dynamo=False``, deprecated) fails on vgg16_bn at small inputs
(``adaptive_avg_pool2d`` to 7x7 from a 1x1 map). The legacy exporter is about five times
faster, so ``exporter="auto"`` tries dynamo and falls back to it only if dynamo raises.
"""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from capl.benchmark._masks import deployable_copy
from capl.benchmark.latency import make_input
from capl.io import write_bytes_atomic

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
Exporter = Literal["auto", "dynamo", "torchscript"]
EXPORTERS: tuple[str, ...] = ("auto", "dynamo", "torchscript")


def _export_dynamo(net: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool) -> bytes:
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        input_names=["input"],
        output_names=["logits"],
        opset_version=opset,
        verbose=False,
        external_data=False,
        **kwargs,
    )
    return program.model_proto.SerializeToString()


def _export_torchscript(
    net: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool
) -> bytes:
    buffer = io.BytesIO()
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        net,
        (example,),
        buffer,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        opset_version=opset,
        dynamic_axes=dynamic_axes,
        do_constant_folding=True,
    )
    return buffer.getvalue()


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: tuple[int, ...],
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "auto",
) -> dict[str, Any]:
    """Export ``model`` to ONNX for inference (input ``"input"``, output ``"logits"``).

    The export runs on a CPU deep copy in eval mode with ``torch.nn.utils.prune`` masks made
    permanent (effective weights), so the caller's model is untouched. The file is serialised
    in memory and written atomically (no half-written file on a crash).

    Args:
        model: The network.
        path: Destination ``.onnx`` file; parent folders are created.
        input_shape: ``(C, H, W)`` of one image.
        dynamic_batch: Make the batch dimension symbolic (``"batch"``); otherwise it is 1.
        opset: ONNX opset version.
        exporter: ``"dynamo"``, ``"torchscript"`` (legacy) or ``"auto"`` (dynamo, falling back
            to torchscript if dynamo fails).

    Returns:
        ``{"path", "exporter", "opset", "bytes", "dynamic_batch", "seconds"}``.

    Raises:
        ValueError: For an unknown ``exporter``.
        RuntimeError: If every exporter tried failed (messages chained).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    net = deployable_copy(model, "cpu")
    # torch.export specialises sizes 0 and 1, so a symbolic batch needs an example of 2.
    example = make_input(input_shape, 2 if dynamic_batch else 1, seed=0)
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    errors: list[str] = []
    start = time.perf_counter()
    for name in order:
        try:
            fn = _export_dynamo if name == "dynamo" else _export_torchscript
            with warnings.catch_warnings():  # both exporters are chatty about internals
                warnings.simplefilter("ignore")
                data = fn(net, example, opset, dynamic_batch)
        except Exception as error:
            logger.warning("ONNX export with the %s exporter failed: %s", name, error)
            errors.append(f"{name}: {type(error).__name__}: {error}")
            continue
        written = write_bytes_atomic(path, data)
        return {
            "path": os.fspath(Path(written)),
            "exporter": name,
            "opset": int(opset),
            "bytes": len(data),
            "dynamic_batch": bool(dynamic_batch),
            "seconds": time.perf_counter() - start,
        }
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))
