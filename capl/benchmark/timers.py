"""Ready-to-time forwards: seeded inputs, PyTorch and ONNX Runtime timers, deployable models.

A timer is a context manager yielding ``(step, info)``: ``step()`` runs one inference and
returns its milliseconds, ``info`` says what was timed (batch size, device, threads, backend).
:mod:`capl.benchmark.latency` turns steps into summaries; :mod:`capl.benchmark.memory` reuses
the inputs and deployable models.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from capl.benchmark._masks import deployable_copy, has_masks
from capl.models import model_device

logger = logging.getLogger(__name__)


def make_input(
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A standard-normal batch from a seeded generator: two calls give identical tensors.

    The tensor is drawn on the CPU (the same numbers on every device) and then moved.

    Args:
        input_shape: ``(C, H, W)`` without the batch dimension.
        batch_size: Leading dimension.
        seed: Generator seed.
        device: Where the tensor ends up.
        dtype: Floating dtype.

    Returns:
        A tensor of shape ``(batch_size, *input_shape)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    shape = (int(batch_size), *(int(d) for d in input_shape))
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


@contextlib.contextmanager
def preserved_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's training flag afterwards."""
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags.items():
            module.training = flag


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        if threads is not None:
            torch.set_num_threads(previous)


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`; raises ``ValueError`` for CUDA without a GPU."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but torch.cuda.is_available() is False")
    return dev


@contextlib.contextmanager
def runnable(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """The model as it would be deployed on ``device``, without changing the caller's model.

    Unmasked models already on ``device`` are used in place (eval mode, restored afterwards);
    masked models or models elsewhere are timed on a deployable copy.
    """
    current = model_device(model)
    same_device = current.type == device.type and (
        device.index is None or current.index == device.index
    )
    if same_device and not has_masks(model):
        with preserved_mode(model):
            yield model
    else:
        yield deployable_copy(model, device)


Timer = Iterator[tuple[Callable[[], float], dict[str, Any]]]


@contextlib.contextmanager
def torch_timer(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    seed: int = 0,
    threads: int | None = None,
) -> Timer:
    """A ready PyTorch forward for timing: yields ``(step, info)``; ``step()`` returns ms.

    Eval mode and ``torch.inference_mode`` inside; CPU steps are timed with
    ``time.perf_counter``, CUDA steps with CUDA events around the forward followed by a
    synchronize, so asynchronous launches are not mistaken for speed. The model's training
    flags and the thread setting are restored on exit; masked models run as a deployable copy.
    """
    dev = resolve_device(device)
    x = make_input(input_shape, batch_size, seed, dev)
    with _torch_threads(threads) as n_threads, runnable(model, dev) as net:
        with torch.inference_mode():
            if dev.type == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)

                def step() -> float:
                    start.record()
                    net(x)
                    end.record()
                    end.synchronize()
                    return float(start.elapsed_time(end))

                torch.cuda.synchronize(dev)
            else:

                def step() -> float:
                    t0 = time.perf_counter()
                    net(x)
                    return (time.perf_counter() - t0) * 1000.0

            info = {
                "batch_size": int(batch_size),
                "device": str(dev),
                "threads": int(n_threads),
                "backend": "torch",
            }
            yield step, info


def ort_session(
    onnx_path: str | os.PathLike,
    threads: int,
    device: str | torch.device = "cpu",
    spinning: bool = False,
    profile: str | os.PathLike | None = None,
) -> Any:
    """An ONNX Runtime session configured for benchmarking.

    Explicit ``intra_op_num_threads`` (the published reference pinned ORT to one thread
    silently), one inter-op thread with sequential execution, intra-op threads that sleep
    instead of spinning after a run (unless ``spinning``), all graph optimisations, and the
    CUDA provider when ``device`` is CUDA and ORT offers it.

    Args:
        onnx_path: The ``.onnx`` file.
        threads: Intra-op threads (>= 1).
        device: ``"cpu"`` or ``"cuda"``.
        spinning: Let idle intra-op threads spin (ORT's own default; faster alone, unfair when
            several sessions are timed in turn).
        profile: File prefix for ONNX Runtime's profiler (per-node kernel times of the very
            session the benchmark times); ``session.end_profiling()`` returns the trace's path.

    Returns:
        The ``onnxruntime.InferenceSession``.
    """
    import onnxruntime as ort

    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1 for ONNX Runtime, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # interleaved timing keeps several sessions alive: a spinning pool of the model just timed
    # steals cores from the next one, so models in the middle of a round looked 0.6-0.8x as
    # fast as an identical copy timed first (scripts/bench_ort_spinning.py)
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = os.fspath(profile)
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            logger.warning("CUDAExecutionProvider unavailable in onnxruntime; timing on CPU")
    return ort.InferenceSession(os.fspath(onnx_path), options, providers=providers)


def _seeded_feed(
    session: Any, input_shape: tuple[int, ...], batch_size: int, seed: int = 0
) -> dict[str, Any]:
    """An ONNX Runtime session's input feed: the seeded batch every backend is timed on."""
    return {session.get_inputs()[0].name: make_input(input_shape, batch_size, seed).numpy()}


def ort_kernel_times(
    trace: str | os.PathLike, warmup: int = 0
) -> list[dict[tuple[str, str], float]]:
    """Per run in an ONNX Runtime profile, the kernel milliseconds of each node.

    Args:
        trace: The file ``session.end_profiling()`` returned (see :func:`ort_session`).
        warmup: Runs at the start to leave out.

    Returns:
        One ``{(op type, node name): ms}`` per run after the warm-up, in run order.
    """
    events = json.loads(Path(trace).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    runs: list[dict[tuple[str, str], float]] = [{} for _ in starts[warmup:]]
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        index = bisect.bisect_right(starts, event["ts"]) - 1 - warmup
        if index >= 0:
            key = (event["args"]["op_name"], name.removesuffix("_kernel_time"))
            runs[index][key] = runs[index].get(key, 0.0) + event["dur"] / 1000.0
    return runs


def profiled_runs(
    onnx_path: str | os.PathLike,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    threads: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 0,
    runs: int = 10,
) -> list[dict[tuple[str, str], float]]:
    """Run a profiled benchmark session (:func:`ort_session`) on the seeded input.

    Args:
        onnx_path: The ``.onnx`` file; the profiler's trace is written beside it, then deleted.
        input_shape: ``(C, H, W)`` of one image.
        batch_size: Images per run.
        threads: Intra-op threads.
        device: ``"cpu"`` or ``"cuda"`` (on CUDA the profiler times a node's launch).
        warmup: Runs first, left out.
        runs: Runs profiled.

    Returns:
        :func:`ort_kernel_times` of the ``runs`` after the warm-up.
    """
    session = ort_session(onnx_path, threads, device, profile=Path(onnx_path).with_suffix(""))
    feed = _seeded_feed(session, input_shape, batch_size)
    for _ in range(warmup + runs):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    try:
        return ort_kernel_times(trace, warmup)
    finally:
        trace.unlink(missing_ok=True)


@contextlib.contextmanager
def ort_timer(
    onnx_path: str | os.PathLike,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    threads: int = 1,
    device: str | torch.device = "cpu",
    seed: int = 0,
    spinning: bool = False,
) -> Timer:
    """A ready ONNX Runtime session for timing: yields ``(step, info)``; ``step()`` returns ms.

    Timed with ``time.perf_counter`` around ``session.run`` (which returns host arrays, so it
    is synchronous; on CUDA this includes the host-device copies of input and output).
    ``spinning`` as in :func:`ort_session`.
    """
    session = ort_session(onnx_path, threads, device, spinning)
    feed = _seeded_feed(session, input_shape, batch_size, seed)

    def step() -> float:
        t0 = time.perf_counter()
        session.run(None, feed)
        return (time.perf_counter() - t0) * 1000.0

    provider = session.get_providers()[0]
    yield (
        step,
        {
            "batch_size": int(batch_size),
            "device": "cuda" if provider == "CUDAExecutionProvider" else "cpu",
            "threads": int(threads),
            "provider": provider,
            "backend": "onnxruntime",
        },
    )
