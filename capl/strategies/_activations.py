"""Shared machinery for data-driven criteria: layer selection, batches and activation sites.

The *activation site* of a Conv2d is the tensor a channel criterion looks at: the output of the
BatchNorm2d that directly consumes the conv's output (conv -> BN, as in every torchvision network),
or the conv's own output when no BatchNorm follows. Sites are found at run time by tensor identity
(a BatchNorm whose input *is* the conv's output), which works for any forward structure and needs
no tracing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from capl.strategies.base import Batch


def conv_layers(layers: Mapping[str, nn.Module]) -> dict[str, nn.Conv2d]:
    """The Conv2d modules among ``layers`` (other module types are not scored per filter)."""
    return {name: m for name, m in layers.items() if isinstance(m, nn.Conv2d)}


def all_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every Conv2d of ``model`` by qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def weight_layers(layers: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """The Conv2d and Linear modules among ``layers`` (the units of unstructured pruning)."""
    return {n: m for n, m in layers.items() if isinstance(m, (nn.Conv2d, nn.Linear))}


def following_batchnorms(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Map each Conv2d to the BatchNorm2d registered right after it, when its width matches.

    This is a static (data-free) view of the conv -> BN pairing: torchvision registers modules in
    forward order, so a BN registered directly after a conv with ``num_features ==
    out_channels`` normalises that conv's output (the assumption zennit's
    ``SequentialMergeBatchNorm`` makes too). :class:`ActivationSites` finds the pairing at run
    time instead.
    """
    pairs: dict[str, nn.BatchNorm2d] = {}
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    for (name, mod), (_, nxt) in itertools.pairwise(leaves):
        if (
            isinstance(mod, nn.Conv2d)
            and isinstance(nxt, nn.BatchNorm2d)
            and nxt.num_features == mod.out_channels
        ):
            pairs[name] = nxt
    return pairs


def iter_batches(batches: Iterable[Batch], device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)`` moved to ``device`` (batches may arrive on the CPU)."""
    for batch in batches:
        images, labels = batch[0], batch[1]
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def new_stat(shape: tuple[int, ...] | int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A zero statistic; float sums use float64 so that shard sums match the whole closely."""
    if dtype.is_floating_point and device.type == "mps":  # MPS has no float64
        dtype = torch.float32
    return torch.zeros(shape, device=device, dtype=dtype)


class ActivationSites:
    """Context manager recording each scored conv's activation site on every forward pass.

    After a forward, :attr:`sites` maps conv name -> site tensor ``[B, C, H, W]``. The hooks hand a
    *clone* downstream, so in-place activations (``ReLU(inplace=True)``) cannot overwrite the
    recorded tensor, and with autograd enabled the recorded tensor stays the exact graph node whose
    gradient is dL/d(site). All hooks are removed on exit, also when the body raised.

    Args:
        model: The network.
        convs: Convs to record, by name.
        follow_bn: Use the output of a directly following BatchNorm2d as the site; ``False`` records
            the conv output itself (LRP, where BNs are folded into the convs).
    """

    def __init__(
        self, model: nn.Module, convs: Mapping[str, nn.Conv2d], follow_bn: bool = True
    ) -> None:
        self.model = model
        self.convs = dict(convs)
        self.follow_bn = follow_bn
        self.sites: dict[str, Tensor] = {}
        self._conv_by_id: dict[int, str] = {}
        self._pending: dict[int, str] = {}
        self._keep: list[Tensor] = []
        self._handles: list[RemovableHandle] = []

    def reset(self) -> None:
        """Forget the tensors of the previous forward pass."""
        self.sites.clear()
        self._conv_by_id.clear()
        self._pending.clear()
        self._keep.clear()

    def __enter__(self) -> ActivationSites:
        try:
            for name, conv in self.convs.items():
                self._handles.append(conv.register_forward_hook(self._conv_hook(name)))
            if self.follow_bn:
                for bn in self.model.modules():
                    if isinstance(bn, nn.BatchNorm2d):
                        # prepend: see the input before other pre-hooks (e.g. zennit's) replace it
                        self._handles.append(
                            bn.register_forward_pre_hook(self._bn_pre_hook, prepend=True)
                        )
                        self._handles.append(bn.register_forward_hook(self._bn_hook))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.reset()

    def _conv_hook(self, name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            self.sites[name] = output
            passed = output.clone()
            self._keep.append(passed)  # keeps the id unique while this forward runs
            self._conv_by_id[id(passed)] = name
            return passed

        return hook

    def _bn_pre_hook(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        name = self._conv_by_id.get(id(inputs[0])) if inputs else None
        if name is not None:
            self._pending[id(module)] = name

    def _bn_hook(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor
    ) -> Tensor | None:
        name = self._pending.pop(id(module), None)
        if name is None:
            return None
        self.sites[name] = output
        return output.clone()


def rows_tensor(target_rows: Iterable[int], device: torch.device) -> Tensor:
    """``target_rows`` as an int64 tensor on ``device``; subset label ``y`` maps to ``rows[y]``."""
    rows = torch.as_tensor(list(target_rows), dtype=torch.long, device=device)
    if rows.numel() == 0:
        from capl.errors import ConfigError

        raise ConfigError(
            "target_rows is empty: class-aware criteria need the head row of each class"
        )
    return rows
