"""Peak memory of one inference (PyTorch): CUDA allocator peaks, CPU profiler allocations."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from capl.benchmark.timers import make_input, resolve_device, runnable

logger = logging.getLogger(__name__)


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
    dev = resolve_device(device)
    x = make_input(input_shape, batch_size, seed, dev)
    result: dict[str, Any] = {"batch_size": int(batch_size), "device": str(dev)}
    with runnable(model, dev) as net, torch.inference_mode():
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
