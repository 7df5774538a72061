"""The pruning budget and constraints, validated when built."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from capl.errors import ConfigError

Scope = Literal["layer", "global"]
Target = Literal["macs", "params", "latency"]
RoundTo = int | Literal["auto"] | None

_SCOPES = ("layer", "global")
_TARGETS = (None, "macs", "params", "latency")


@dataclass
class PruningConfig:
    """How much to prune and where.

    Attributes:
        ratio: In [0, 1). Without ``target``: the fraction of prunable filters (output channels of
            prunable convs; weights or kernels for mask granularities) to remove. With ``target``:
            the fraction of the whole network's MACs or parameters to remove.
        scope: ``"layer"`` removes ``ratio`` of every prunable group (layer); ``"global"`` ranks
            all units across layers after the criterion's per-layer normalisation.
        target: ``None``, ``"macs"``, ``"params"`` or ``"latency"``: search the per-layer ratio
            (layer scope) or the global threshold (global scope) until the realised reduction of
            the whole network's MACs / parameters, or its latency predicted from a measured
            per-layer table (:mod:`capl.pruning.latency_table`; structured criteria only),
            reaches ``ratio``. Compares criteria at equal budget.
        ignore: ``fnmatch`` patterns of module names never pruned (a group is kept whole when
            any member matches). Every pattern must match some module.
        skip_first: The first N convolutions in forward order are not pruned.
        round_to: Kept channel counts are multiples of this (structured pruning only; masks
            ignore it). ``"auto"`` (default) picks the multiple that suits the device the network
            is planned on (:func:`auto_round_to`); ``None`` keeps any width.
        min_channels: Units every layer keeps at least (channels, or kernels / weights for masks).
            With 0, a budget that empties a layer is an error instead of being clamped.
        layer_ratios: ``{fnmatch pattern: ratio}`` with ratios in [0, 1), or ``None``. Needs
            ``scope: layer`` and no ``target``. A group whose key conv (its first conv in forward
            order, the name plans use; for masks: the layer) matches a pattern removes that
            ratio instead of ``ratio``; the first matching pattern in dict order wins, unmatched
            groups use ``ratio``. Every pattern must match some prunable group / layer. A
            ``capl-sensitivity`` ``suggestion.json`` holds such a mapping.
    """

    ratio: float
    scope: Scope = "layer"
    target: Target | None = None
    ignore: list[str] = field(default_factory=list)
    skip_first: int = 0
    round_to: RoundTo = "auto"
    min_channels: int = 1
    layer_ratios: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)):
            raise ConfigError(f"pruning ratio must be a number, got {self.ratio!r}")
        self.ratio = float(self.ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(
                f"pruning ratio {self.ratio} is out of range: give a fraction in [0, 1) "
                "(0.5 removes half)"
            )
        if self.scope not in _SCOPES:
            raise ConfigError(f"unknown pruning scope {self.scope!r}: choose one of layer, global")
        if self.target not in _TARGETS:
            raise ConfigError(
                f"unknown pruning target {self.target!r}: choose null, macs, params or latency"
            )
        if isinstance(self.ignore, str) or not all(isinstance(p, str) for p in self.ignore):
            raise ConfigError(
                f"pruning ignore must be a list of module-name patterns, got {self.ignore!r}"
            )
        self.ignore = list(self.ignore)
        if isinstance(self.skip_first, bool) or not isinstance(self.skip_first, int):
            raise ConfigError(f"skip_first must be an integer >= 0, got {self.skip_first!r}")
        if self.skip_first < 0:
            raise ConfigError(f"skip_first must be >= 0, got {self.skip_first}")
        if self.round_to not in (None, "auto") and (
            isinstance(self.round_to, bool)
            or not isinstance(self.round_to, int)
            or self.round_to < 1
        ):
            raise ConfigError(
                f"round_to must be auto, null or an integer >= 1, got {self.round_to!r}"
            )
        if isinstance(self.min_channels, bool) or not isinstance(self.min_channels, int):
            raise ConfigError(f"min_channels must be an integer >= 0, got {self.min_channels!r}")
        if self.min_channels < 0:
            raise ConfigError(f"min_channels must be >= 0, got {self.min_channels}")
        self.layer_ratios = self._check_layer_ratios(self.layer_ratios)

    def _check_layer_ratios(self, value: Any) -> dict[str, float] | None:
        """Validate ``layer_ratios``; an empty mapping is the same as ``None``."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ConfigError(
                f"layer_ratios must be a mapping of module-name patterns to ratios, got {value!r}"
            )
        if not value:
            return None
        if self.scope != "layer" or self.target is not None:
            raise ConfigError(
                f"layer_ratios needs scope: layer and no target (got scope {self.scope!r}, "
                f"target {self.target!r})"
            )
        out: dict[str, float] = {}
        for pattern, ratio in value.items():
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(
                    f"layer_ratios keys must be module-name patterns, got {pattern!r}"
                )
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
                raise ConfigError(
                    f"layer_ratios[{pattern!r}] must be a number in [0, 1), got {ratio!r}"
                )
            if not 0.0 <= float(ratio) < 1.0:
                raise ConfigError(
                    f"layer_ratios[{pattern!r}] = {ratio} is out of range: give a fraction in "
                    "[0, 1)"
                )
            out[pattern] = float(ratio)
        return out

    def resolved_round_to(
        self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> int | None:
        """``round_to`` as an integer multiple (or ``None``) for a network on ``device``."""
        return auto_round_to(device, dtype) if self.round_to == "auto" else self.round_to

    def ratio_for(self, name: str) -> float:
        """The ratio a group keyed by ``name`` (or a mask layer) removes under layer scope."""
        for pattern, ratio in (self.layer_ratios or {}).items():
            if fnmatch.fnmatch(name, pattern):
                return ratio
        return self.ratio

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningConfig:
        """Rebuild (and validate) from :meth:`to_dict` output."""
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ConfigError(
                f"unknown pruning option(s) {', '.join(sorted(unknown))}: valid are "
                f"{', '.join(cls.__dataclass_fields__)}"
            )
        return cls(**data)


def auto_round_to(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    cpu_capability: str | None = None,
) -> int:
    """The channel multiple ``round_to: auto`` keeps for a network on ``device``.

    Convolution kernels process channels in fixed-size blocks and pad a partial block, so a
    width that is not a multiple of the block costs about as much as the next multiple and the
    MACs it saves are not realised (the width-latency staircase of ``scripts/bench_widths.py``,
    ``benchmarks/efficiency.md``). The rule:

    - CPU: the fp32 lanes of the widest vector register the CPU kernels use, which is the
      channel block of ONNX Runtime's MLAS NCHWc kernels and oneDNN's blocked layouts: 16 on
      AVX-512, 8 otherwise (AVX2 and narrower, ARM). On AVX-512 a width of 8 mod 16 is padded
      to the next 16, and a tensor whose channels are not a multiple of 16 leaves the blocked
      layout around every elementwise op (residual add, squeeze-excitation scale) for a
      reorder, which costs more than the MACs saved: MobileNetV3-Large at 224 on ONNX
      Runtime lost 0.2 of its efficiency with multiples of 8 (``benchmarks/efficiency.md``).
    - CUDA: the 16-byte alignment tensor-core convolutions need, at least 8 channels: 8 for
      fp32 (TF32) and 16-bit floats, 16 for 8-bit types.

    Args:
        device: Where the network is planned (and is to run).
        dtype: Its parameters' dtype.
        cpu_capability: The CPU's vector capability as
            ``torch.backends.cpu.get_cpu_capability()`` names it (``"AVX512"``, ``"AVX2"``,
            ...); read from torch when ``None``.
    """
    if torch.device(device).type == "cuda":
        itemsize = torch.empty((), dtype=dtype).element_size()
        return max(8, 16 // itemsize)
    if cpu_capability is None:
        cpu_capability = torch.backends.cpu.get_cpu_capability()
    return 16 if cpu_capability.upper().startswith("AVX512") else 8
