"""Latency (PyTorch, ONNX Runtime) and peak memory of one inference.

Timing protocol, shared by both backends: identical seeded inputs (:func:`make_input`),
``warmup`` untimed runs, then timed runs until *both* ``repeats`` runs and ``min_time_s``
seconds have been collected, so the median is stable for fast and slow models alike. Every
summary says whether it can be trusted: ``busy`` is set when the medians of its rounds (or of
consecutive chunks) spread by more than 20 % or its p90 exceeds 1.5x the median.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from capl.benchmark._masks import deployable_copy, has_masks, model_device

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


BUSY_ROUND_SPREAD = 0.2
"""A latency is flagged ``busy`` when its round medians spread by more than this fraction of
the overall median (max - min over median): the machine's load changed while it was timed."""
BUSY_P90_OVER_MEDIAN = 1.5
"""A latency is also flagged ``busy`` when its 90th percentile exceeds the median by this factor: a
long tail of runs that waited for the CPU."""
_CHUNKS = 4  # a single measurement is judged by the medians of this many consecutive chunks


def _summary(times_ms: list[float], rounds: list[list[float]] | None = None) -> dict[str, Any]:
    """Summary statistics plus a stability judgement (``busy``).

    Args:
        times_ms: Every timed run.
        rounds: The same runs per alternating round; ``None`` splits ``times_ms`` into
            consecutive chunks instead.
    """
    arr = np.asarray(times_ms, dtype=np.float64)
    median = float(statistics.median(times_ms))
    p90 = float(np.percentile(arr, 90))
    if rounds is None:
        chunks = max(1, min(_CHUNKS, len(times_ms) // 2))
        rounds = [list(part) for part in np.array_split(arr, chunks)]
    round_medians = [float(statistics.median(r)) for r in rounds if len(r)]
    spread = (max(round_medians) - min(round_medians)) / median if median > 0 else 0.0
    tail = p90 / median if median > 0 else 1.0
    return {
        "median_ms": median,
        "p90_ms": p90,
        "mean_ms": float(arr.mean()),
        "std_ms": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min_ms": float(arr.min()),
        "repeats": len(times_ms),
        "total_s": float(arr.sum() / 1000.0),
        "round_medians_ms": round_medians,
        "round_spread": spread,
        "p90_over_median": tail,
        "busy": bool(spread > BUSY_ROUND_SPREAD or tail > BUSY_P90_OVER_MEDIAN),
    }


def _check_protocol(warmup: int, repeats: int, min_time_s: float) -> None:
    if warmup < 0 or repeats < 1 or min_time_s < 0:
        raise ValueError(
            f"need warmup >= 0, repeats >= 1, min_time_s >= 0; got {warmup}, {repeats}, "
            f"{min_time_s}"
        )


def _time_loop(
    step: Callable[[], float], warmup: int, repeats: int, min_time_s: float
) -> list[float]:
    """Run ``step`` (returns ms) ``warmup`` times, then until both count and time are met."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    elapsed = 0.0
    while len(times) < repeats or elapsed < min_time_s:
        ms = step()
        times.append(ms)
        elapsed += ms / 1000.0
    return times


def _resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but torch.cuda.is_available() is False")
    return dev


@contextlib.contextmanager
def _runnable(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
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
    dev = _resolve_device(device)
    x = make_input(input_shape, batch_size, seed, dev)
    with _torch_threads(threads) as n_threads, _runnable(model, dev) as net:
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


def measure_latency_torch(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 1.0,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Forward-pass latency in PyTorch (eval mode, ``torch.inference_mode``).

    Args:
        model: The network; its training flags are restored afterwards and masked models are
            timed on a copy with masks made permanent.
        input_shape: ``(C, H, W)`` of one image.
        batch_size: Images per forward.
        device: ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (CUDA events with synchronisation).
        warmup: Untimed forwards first.
        repeats: Minimum number of timed forwards.
        min_time_s: Minimum total timed seconds.
        seed: Input seed (identical inputs across calls and models).
        threads: ``torch.set_num_threads`` for the measurement (restored afterwards);
            ``None`` keeps the current setting.

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "repeats", "total_s",
        "round_medians_ms", "round_spread", "p90_over_median", "busy", "batch_size", "device",
        "threads", "backend": "torch"}``; ``busy`` flags a measurement whose chunk medians or
        tail show that the machine's load changed (:data:`BUSY_ROUND_SPREAD`,
        :data:`BUSY_P90_OVER_MEDIAN`).
    """
    _check_protocol(warmup, repeats, min_time_s)
    with torch_timer(model, input_shape, batch_size, device, seed, threads) as (step, info):
        times = _time_loop(step, warmup, repeats, min_time_s)
    return _summary(times) | info


def measure_interleaved(
    timers: list[contextlib.AbstractContextManager[tuple[Callable[[], float], dict[str, Any]]]],
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 1.0,
    rounds: int = 4,
) -> list[dict[str, Any]]:
    """Time several models in alternating rounds, so load changes hit them all alike.

    Comparing a base and a pruned model measured minutes apart on a shared machine mixes
    the speed-up with the machine's mood; here every round times each model in turn (order
    reversed every other round: A B B A ...), each round taking its share of ``repeats`` and
    ``min_time_s``, and each model's summary is over all its rounds.

    Args:
        timers: One :func:`torch_timer` / :func:`ort_timer` per model (not yet entered).
        warmup: Untimed runs of each model first.
        repeats: Minimum timed runs per model in total.
        min_time_s: Minimum timed seconds per model in total.
        rounds: Number of alternating rounds.

    Returns:
        One summary per timer (as :func:`measure_latency_torch` returns, ``round_medians_ms``
        per alternating round), plus ``rounds``.
    """
    _check_protocol(warmup, repeats, min_time_s)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    with contextlib.ExitStack() as stack:
        entered = [stack.enter_context(timer) for timer in timers]
        for step, _ in entered:
            for _ in range(warmup):
                step()
        times: list[list[list[float]]] = [[] for _ in entered]
        per_round = -(-repeats // rounds)
        for r in range(rounds):
            order = range(len(entered)) if r % 2 == 0 else reversed(range(len(entered)))
            for i in order:
                times[i].append(_time_loop(entered[i][0], 0, per_round, min_time_s / rounds))
        return [
            _summary([ms for rnd in t for ms in rnd], t) | info | {"rounds": rounds}
            for t, (_, info) in zip(times, entered)
        ]


def ort_session(
    onnx_path: str | os.PathLike, threads: int, device: str | torch.device = "cpu"
) -> Any:
    """An ONNX Runtime session configured for benchmarking.

    Explicit ``intra_op_num_threads`` (the published reference pinned ORT to one thread
    silently), one inter-op thread with sequential execution, all graph optimisations, and
    the CUDA provider when ``device`` is CUDA and ORT offers it.

    Args:
        onnx_path: The ``.onnx`` file.
        threads: Intra-op threads (>= 1).
        device: ``"cpu"`` or ``"cuda"``.

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
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            logger.warning("CUDAExecutionProvider unavailable in onnxruntime; timing on CPU")
    return ort.InferenceSession(os.fspath(onnx_path), options, providers=providers)


@contextlib.contextmanager
def ort_timer(
    onnx_path: str | os.PathLike,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    threads: int = 1,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Timer:
    """A ready ONNX Runtime session for timing: yields ``(step, info)``; ``step()`` returns ms.

    Timed with ``time.perf_counter`` around ``session.run`` (which returns host arrays, so it
    is synchronous; on CUDA this includes the host-device copies of input and output).
    """
    session = ort_session(onnx_path, threads, device)
    feed = {session.get_inputs()[0].name: make_input(input_shape, batch_size, seed).numpy()}

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


def measure_latency_onnxruntime(
    onnx_path: str | os.PathLike,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    threads: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Inference latency in ONNX Runtime on the same seeded inputs as PyTorch.

    Args:
        onnx_path: Model exported by :func:`capl.benchmark.export_onnx` (dynamic batch).
        input_shape: ``(C, H, W)`` of one image.
        batch_size: Images per run.
        threads: ``intra_op_num_threads`` (explicit on purpose).
        device: ``"cpu"`` or ``"cuda"``; CUDA falls back to CPU when ORT lacks the provider.
        warmup: Untimed runs first.
        repeats: Minimum timed runs.
        min_time_s: Minimum total timed seconds.
        seed: Input seed.

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "repeats", "total_s",
        "batch_size", "device", "threads", "provider", "backend": "onnxruntime"}``.
    """
    _check_protocol(warmup, repeats, min_time_s)
    with ort_timer(onnx_path, input_shape, batch_size, threads, device, seed) as (step, info):
        times = _time_loop(step, warmup, repeats, min_time_s)
    return _summary(times) | info


def _tensor_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def _cpu_allocation_peak(net: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of live CPU allocations made during one forward, from profiler events."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    # libkineto prints "USDT: profiler_start/stop" and, without a GPU, "gpuGetDeviceCount
    # failed" on every use; level 6 is above its ERROR and USDT levels. It reads the variable at
    # its first use in the process, so a user's own setting (set earlier) wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        net(x)
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
        stack.extend(node.children)
    events.sort(key=lambda item: item[0])
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak


def peak_memory(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Peak memory of one inference (eval mode, ``torch.inference_mode``), after one warm-up.

    - CUDA (``method="cuda_max_memory_allocated"``): ``reset_peak_memory_stats`` then
      ``max_memory_allocated`` around the forward; ``baseline_bytes`` is what was allocated
      before it (weights, input and anything else on that device).
    - CPU (``method="torch_profiler_allocations"``): the running sum of allocation/free events
      recorded by ``torch.profiler(profile_memory=True)`` during the forward gives the peak of
      tensors alive at once (activations and workspace through PyTorch's allocator);
      ``baseline_bytes`` is the model's parameters and buffers plus the input. Memory that
      backends allocate outside PyTorch's allocator is not seen; process RSS is not used
      because the C allocator reuses freed pages and RSS never goes down.

    Args:
        model: The network; training flags are restored.
        input_shape: ``(C, H, W)`` of one image.
        batch_size: Images per forward.
        device: ``"cpu"`` or ``"cuda"``.
        seed: Input seed.

    Returns:
        ``{"peak_bytes", "activation_bytes", "baseline_bytes", "method", "batch_size",
        "device"}``; byte fields are ``None`` (and ``method`` says why) when no measurement
        was possible.
    """
    dev = _resolve_device(device)
    x = make_input(input_shape, batch_size, seed, dev)
    result: dict[str, Any] = {"batch_size": int(batch_size), "device": str(dev)}
    with _runnable(model, dev) as net, torch.inference_mode():
        net(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            baseline = torch.cuda.memory_allocated(dev)
            net(x)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev)
            result.update(
                peak_bytes=int(peak),
                activation_bytes=int(peak - baseline),
                baseline_bytes=int(baseline),
                method="cuda_max_memory_allocated",
            )
            return result
        baseline = _tensor_bytes(net) + x.numel() * x.element_size()
        try:
            activations = _cpu_allocation_peak(net, x)
        except Exception as error:  # private profiler API: degrade, do not break a benchmark
            logger.warning("CPU peak memory unavailable: %s", error)
            result.update(
                peak_bytes=None,
                activation_bytes=None,
                baseline_bytes=int(baseline),
                method=f"unavailable: {type(error).__name__}",
            )
            return result
    result.update(
        peak_bytes=int(baseline + activations),
        activation_bytes=int(activations),
        baseline_bytes=int(baseline),
        method="torch_profiler_allocations",
    )
    return result
