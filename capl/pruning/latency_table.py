"""Per-layer latency lookup tables: the predicted latency of a pruned network (``target: latency``).

A :class:`LatencyTable` holds, for every Conv2d / Linear of one network at one input size, the
latency of that layer alone measured on a grid of kept input x output widths on one backend,
batch size and thread count (on ONNX Runtime on the CPU, the layer's own kernel time, without
the layout reorders ORT puts around a lone layer), plus the latency of the whole unpruned
network. A pruned network is predicted as the sum of its layers' latencies (bilinear in the
kept widths), calibrated to the measured whole (see :meth:`LatencyTable.predict`). Identical
layers (same shapes, stride, groups and input size) are measured once. Tables are measured
once per network x input size x backend x batch size x threads and kept as JSON in a cache
folder.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from capl.errors import ConfigError
from capl.io import write_json_atomic
from capl.pruning.latency_timer import KERNELS, TableTimer, layers_timed
from capl.pruning.plan_format import fingerprint
from capl.pruning.structure import IN, OUT, Structure, analyse

log = logging.getLogger(__name__)

TABLE_VERSION = 1
FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
_BACKENDS = ("torch", "onnxruntime")


@dataclass
class LatencySpec:
    """Where latency is measured for ``target: latency`` (and predicted in every plan).

    Attributes:
        backend: ``"onnxruntime"`` or ``"torch"``.
        batch_size: Images per forward.
        threads: Intra-op threads; ``None``: torch's current setting.
        device: ``"cpu"`` or ``"cuda"``.
        cache: Folder for measured tables (``None``: measure every time).
        warmup: Untimed runs per table entry.
        repeats: Timed runs per table entry (median).
        exporter: ONNX exporter for the whole network (layers use ``torchscript``).
    """

    backend: Literal["torch", "onnxruntime"] = "onnxruntime"
    batch_size: int = 32
    threads: int | None = None
    device: str = "cpu"
    cache: str | None = None
    warmup: int = 1
    repeats: int = 5
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"

    def __post_init__(self) -> None:
        if self.backend not in _BACKENDS:
            raise ConfigError(
                f"latency backend {self.backend!r} is unknown: use torch or onnxruntime"
            )
        for name, minimum in (("batch_size", 1), ("warmup", 0), ("repeats", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"latency {name} must be an integer >= {minimum}, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"latency threads must be null or >= 1, got {self.threads!r}")

    def resolved_threads(self) -> int:
        """The thread count the table is measured (and keyed) with."""
        return int(self.threads or torch.get_num_threads())


@dataclass
class LatencyTable:
    """Measured per-layer latencies of one network; see the module docstring.

    Attributes:
        settings: Backend, batch size, threads, device, input shape and versions measured with.
        base_ms: Measured latency of the whole unpruned network.
        rest_ms: ``base_ms`` minus the layers' latencies at full width.
        layers: Per layer name: ``in_widths``, ``out_widths`` (the grid), ``ms`` (row per input
            width), ``positions`` (output positions per sample), ``depthwise``.
    """

    settings: dict[str, Any]
    base_ms: float
    rest_ms: float
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def layer_ms(self, name: str, inp: int, out: int) -> float:
        """Latency of one layer with ``inp`` input and ``out`` output channels kept."""
        entry = self.layers[name]
        if entry["depthwise"]:
            return max(0.0, _interp(entry["out_widths"], [row[0] for row in entry["ms"]], out))
        rows = [_interp(entry["out_widths"], row, out) for row in entry["ms"]]
        return max(0.0, _interp(entry["in_widths"], rows, inp))

    def predict(self, widths: dict[str, tuple[int, int]]) -> float:
        """Predicted latency (ms) with ``{layer: (kept inputs, kept outputs)}`` (others full).

        The whole network's measured latency differs from the sum of its layers timed alone by
        ``rest_ms``. When it is positive on a clock-timed table (BatchNorms, activations,
        additions and pooling run as their own kernels), it is scaled by the fraction of conv
        output elements kept. Otherwise every layer is scaled by ``base / sum``: when it is
        negative, the backend fused those ops into the convs and every layer timed alone paid
        its own call overhead; on a kernel-timed table (ONNX Runtime), the rest is mostly the
        layout reorders around widths that are not whole channel blocks and the ops between
        convs, which shrank with the convs' time, not with their outputs (MobileNetV3-L cut 4x
        on ONNX Runtime: the non-conv kernels 4.7x faster, the convs 3.7x, outputs kept ~2x).
        """
        total = kept = full = layers_full = 0.0
        for name, entry in self.layers.items():
            width = (entry["in_widths"][-1], entry["out_widths"][-1])
            inp, out = widths.get(name, width)
            total += self.layer_ms(name, inp, out)
            layers_full += self.layer_ms(name, *width)
            kept += out * entry["positions"]
            full += width[1] * entry["positions"]
        scaled = self.rest_ms < 0 or self.settings.get("layers_timed") == KERNELS
        if scaled and layers_full > 0:
            return total * self.base_ms / layers_full
        return total + self.rest_ms * (kept / full if full else 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"version": TABLE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        """Rebuild from :meth:`to_dict` output (a JSON file: data only, no code)."""
        if data.get("version") != TABLE_VERSION:
            raise ConfigError(
                f"latency table version {data.get('version')!r} is not {TABLE_VERSION}: delete "
                "the cached table to measure it again"
            )
        try:
            return cls(
                settings=dict(data["settings"]),
                base_ms=float(data["base_ms"]),
                rest_ms=float(data["rest_ms"]),
                layers={str(k): dict(v) for k, v in data["layers"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(
                f"latency table is damaged ({err}): delete the cached table to measure it again"
            ) from None


def _interp(xs: list[int], ys: list[float], x: float) -> float:
    """Piecewise-linear through ``(xs, ys)``, extrapolated linearly beyond the ends."""
    if len(xs) == 1:
        return float(ys[0])
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def kept_widths(
    structure: Structure, removed: dict[tuple[str, str], int]
) -> dict[str, tuple[int, int]]:
    """``{conv / linear name: (kept inputs, kept outputs)}`` after removing units.

    Args:
        structure: The traced structure.
        removed: Units removed per ``(layer name, "out"|"in")``, as for :meth:`Structure.cost`.
    """
    out: dict[str, tuple[int, int]] = {}
    for name, c in structure.layers.items():
        if c.kind not in ("conv", "linear"):
            continue
        o = c.out_channels - removed.get((name, OUT), 0)
        i = o if c.depthwise else c.in_channels - removed.get((name, IN), 0)
        out[name] = (i, o)
    return out


# --------------------------------------------------------------------------------------------
# measuring


def latency_table(
    model: nn.Module,
    structure: Structure,
    spec: LatencySpec,
    round_to: int | None,
    fingerprint: str,
) -> LatencyTable:
    """The model's latency table for ``spec``, from ``spec.cache`` or measured (and cached).

    Args:
        model: The unpruned network (left unchanged; measured layers are fresh modules).
        structure: Its traced structure (which dims pruning can change, output sizes).
        spec: Backend, batch size, threads, cache.
        round_to: Grid widths are multiples of this (the plan's kept widths are).
        fingerprint: The network's architecture fingerprint (part of the cache key).
    """
    settings = _settings(structure, spec, round_to, fingerprint)
    path = None
    if spec.cache is not None:
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
        path = Path(spec.cache) / f"latency-{digest}.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise ConfigError(
                    f"latency table {path} is unreadable ({err}): delete it"
                ) from None
            table = LatencyTable.from_dict(data)
            if table.settings != settings:
                raise ConfigError(
                    f"latency table {path} was measured for other settings: delete it"
                )
            return table
    start = time.perf_counter()
    table = _measure(model, structure, spec, settings, round_to)
    log.info(
        "latency table (%s bs%d, %d threads, %d layers) measured in %.1f s",
        spec.backend, spec.batch_size, settings["threads"], len(table.layers),
        time.perf_counter() - start,
    )  # fmt: skip
    if path is not None:
        write_json_atomic(path, table.to_dict())
    return table


def network_latency_table(
    model: nn.Module, example_input: torch.Tensor, spec: LatencySpec, round_to: int | None
) -> LatencyTable:
    """:func:`latency_table` for ``model`` at ``example_input``'s shape (traced here).

    Args:
        model: The unpruned network (a copy is measured when it sits on another device).
        example_input: A batch of its input shape.
        spec: Backend, batch size, threads, cache.
        round_to: Grid widths are multiples of this (use the plan's resolved ``round_to``).
    """
    structure = analyse(model, example_input)
    net = model
    if next(model.parameters()).device.type != torch.device(spec.device).type:
        net = copy.deepcopy(model).to(spec.device)
    return latency_table(net, structure, spec, round_to, fingerprint(model))


def _settings(
    structure: Structure, spec: LatencySpec, round_to: int | None, fingerprint: str
) -> dict[str, Any]:
    import onnxruntime

    return {
        "fingerprint": fingerprint,
        "input_shape": list(structure.input_shape),
        "backend": spec.backend,
        "batch_size": spec.batch_size,
        "threads": spec.resolved_threads(),
        "device": spec.device,
        "round_to": round_to,
        "fractions": list(FRACTIONS),
        "warmup": spec.warmup,
        "repeats": spec.repeats,
        "layers_timed": layers_timed(spec),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _grid(channels: int, variable: bool, step: int) -> list[int]:
    if not variable:
        return [channels]
    widths = {min(channels, max(step, round(f * channels / step) * step)) for f in FRACTIONS}
    return sorted(widths | {channels})


def _geometry(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Each Conv2d / Linear's input shape (without the batch), from one forward."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            shapes.setdefault(name, tuple(args[0].shape[1:]))

        return hook

    handles = [
        m.register_forward_pre_hook(record(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    return shapes


def _measure(
    model: nn.Module,
    structure: Structure,
    spec: LatencySpec,
    settings: dict[str, Any],
    round_to: int | None,
) -> LatencyTable:
    variable = {(name, dim) for g in structure.groups for name, dim, _ in g.items}
    variable.add((structure.classifier, OUT))  # a class-subset head cuts the classifier
    param = next(model.parameters())
    example = torch.zeros(1, *structure.input_shape, dtype=param.dtype, device=param.device)
    shapes = _geometry(model, example)
    cache: dict[tuple, list[list[float]]] = {}
    layers: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="capl-latency-") as tmp:
        timer = TableTimer(spec, settings["threads"], Path(tmp))
        for name, c in sorted(structure.layers.items(), key=lambda kv: kv[1].order):
            if c.kind not in ("conv", "linear") or name not in shapes:
                continue
            module = model.get_submodule(name)
            groups = c.groups if c.kind == "conv" and not c.depthwise else 1
            step = max(round_to or 1, groups)
            depthwise = c.depthwise
            ins = _grid(c.in_channels, (name, IN) in variable and not depthwise, step)
            outs = _grid(c.out_channels, (name, OUT) in variable, step)
            key = (_describe(module), shapes[name], tuple(ins), tuple(outs))
            if key not in cache:  # identical layers are measured once
                if depthwise:  # one width: inputs = outputs = groups
                    cache[key] = [[timer.layer(module, shapes[name], o, o)] for o in outs]
                else:
                    cache[key] = [
                        [timer.layer(module, shapes[name], i, o) for o in outs] for i in ins
                    ]
            layers[name] = {
                "in_widths": ins if not depthwise else outs,
                "out_widths": outs,
                "ms": cache[key],
                "positions": c.positions,
                "depthwise": depthwise,
            }
        base = timer.network(model, structure.input_shape)
    table = LatencyTable(settings=settings, base_ms=base, rest_ms=0.0, layers=layers)
    full = {n: (e["in_widths"][-1], e["out_widths"][-1]) for n, e in layers.items()}
    table.rest_ms = base - sum(table.layer_ms(n, *w) for n, w in full.items())
    return table


def _describe(module: nn.Module) -> tuple:
    if isinstance(module, nn.Conv2d):
        return ("conv", module.in_channels, module.out_channels, module.kernel_size,
                module.stride, module.padding, module.dilation, module.groups,
                module.bias is not None, module.padding_mode)  # fmt: skip
    return ("linear", module.in_features, module.out_features, module.bias is not None)


def latency_prediction(
    plan: dict[str, Any] | None, before: dict[str, Any], after: dict[str, Any]
) -> dict[str, Any] | None:
    """Predicted vs measured latency of a pruning, for ``benchmark.json``.

    Args:
        plan: The plan dict (its ``report.selection`` holds the prediction, if any).
        before: The base model's benchmark block (``latency_ms``).
        after: The pruned model's block.

    Returns:
        ``None`` when the plan predicted nothing, else ``{"backend", "batch_size", "threads",
        "predicted_base_ms", "predicted_ms", "predicted_speedup", "measured_base_ms",
        "measured_ms", "measured_speedup", "speedup_error"}`` (``speedup_error``: predicted over
        measured speed-up minus 1; measured fields ``None`` when that cell was not timed).
    """
    selection = ((plan or {}).get("report") or {}).get("selection") or {}
    if "predicted_latency_ms" not in selection:
        return None
    table = selection["latency_table"]
    key = f"bs{table['batch_size']}"

    def median(block: dict[str, Any]) -> float | None:
        cell = ((block.get("latency_ms") or {}).get(table["backend"]) or {}).get(key) or {}
        return cell.get("median_ms")

    base, pred = selection["predicted_base_latency_ms"], selection["predicted_latency_ms"]
    measured_base, measured = median(before), median(after)
    predicted_speedup = base / pred if pred else None
    measured_speedup = measured_base / measured if measured_base and measured else None
    error = None
    if predicted_speedup is not None and measured_speedup:
        error = predicted_speedup / measured_speedup - 1
    return {
        **table,
        "predicted_base_ms": base,
        "predicted_ms": pred,
        "predicted_speedup": predicted_speedup,
        "measured_base_ms": measured_base,
        "measured_ms": measured,
        "measured_speedup": measured_speedup,
        "speedup_error": error,
    }
