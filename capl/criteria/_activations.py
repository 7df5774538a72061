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
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from capl.criteria.base import Batch


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


Reducer = Callable[[str, Tensor], Any]


class ActivationSites:
    """Context manager recording each scored conv's activation site on every forward pass.

    Two ways to use it:

    - :attr:`sites` (gradient criteria): after a forward, conv name -> site tensor
      ``[B, C, H, W]``. The hooks hand a *clone* downstream, so in-place activations
      (``ReLU(inplace=True)``) cannot overwrite the recorded tensor, and with autograd enabled
      the recorded tensor stays the exact graph node whose gradient is dL/d(site).
    - :meth:`run` with ``reduce`` (forward-only criteria): ``reduce(name, site)`` runs inside the
      hooks, as soon as a site is final (right after the conv, or right after the BatchNorm that
      consumes the conv's output, before any in-place activation can touch it), and only its
      small result is kept: no clone, no activation kept alive. Which conv feeds which
      BatchNorm is learned once, on the first image in the recording mode above (so the rule is
      the same run-time identity rule), and checked on every batch: a held conv output that does
      not reach its BatchNorm sends that batch, and all later ones, through the recording mode.

    All hooks are removed on exit, also when the body raised.

    Args:
        model: The network.
        convs: Convs to record, by name.
        follow_bn: Use the output of a directly following BatchNorm2d as the site; ``False`` records
            the conv output itself (LRP, where BNs are folded into the convs).
        reduce: ``(conv name, site) -> statistic`` for :meth:`run`.
    """

    def __init__(
        self,
        model: nn.Module,
        convs: Mapping[str, nn.Conv2d],
        follow_bn: bool = True,
        reduce: Reducer | None = None,
    ) -> None:
        self.model = model
        self.convs = dict(convs)
        self.follow_bn = follow_bn
        self.reduce = reduce
        self.sites: dict[str, Tensor] = {}
        self.results: dict[str, Any] = {}
        self._conv_by_id: dict[int, str] = {}
        self._pending: dict[int, str] = {}
        self._keep: list[Tensor] = []
        self._handles: list[RemovableHandle] = []
        self._fast = False
        self._recording_only = False
        self._wiring: dict[str, int] | None = None  # conv name -> id of the BN it feeds
        self._conv_of_bn: dict[int, str] = {}
        self._sited_bns: dict[int, str] = {}
        self._held: dict[str, Tensor] = {}
        self._broken = False

    def reset(self) -> None:
        """Forget the tensors of the previous forward pass."""
        self.sites.clear()
        self.results.clear()
        self._conv_by_id.clear()
        self._pending.clear()
        self._keep.clear()
        self._held.clear()
        self._sited_bns.clear()
        self._broken = False

    def gradients(
        self, outputs: Tensor, grad_outputs: Tensor | None = None
    ) -> list[tuple[str, Tensor]]:
        """``(conv name, gradient of outputs at its site)`` after a forward, in conv order.

        Args:
            outputs: What to differentiate (one value per image, or a scalar).
            grad_outputs: The vector of the vector-Jacobian product (``None``: ones).

        Returns:
            One pair per recorded site that ``outputs`` depends on.
        """
        names = [n for n in self.convs if n in self.sites]
        grads = torch.autograd.grad(
            outputs, [self.sites[n] for n in names], grad_outputs=grad_outputs, allow_unused=True
        )
        return [(n, g) for n, g in zip(names, grads) if g is not None]

    def run(self, images: Tensor) -> dict[str, Any]:
        """One forward of ``images``; returns ``reduce(name, site)`` per recorded conv.

        Raises:
            ValueError: No ``reduce`` function was given.
        """
        if self.reduce is None:
            raise ValueError("ActivationSites.run needs a reduce function")
        if self._wiring is None and not self._recording_only:
            self._learn(images[:1])
        if not self._recording_only:
            self.reset()
            self._fast = True
            try:
                self.model(images)
            finally:
                self._fast = False
            if not self._broken and not self._held:
                results = dict(self.results)
                self.reset()
                return results
            # a conv output missed the BatchNorm it fed on the first image: the forward depends
            # on the data, so record (and redo this batch) from now on
            self._recording_only = True
        self.reset()
        self.model(images)
        results = {name: self.reduce(name, site) for name, site in self.sites.items()}
        self.reset()
        return results

    def _learn(self, image: Tensor) -> None:
        """Which conv's output feeds which BatchNorm, from one forward in recording mode."""
        self.reset()
        self.model(image)
        self._wiring = {name: bn for bn, name in self._sited_bns.items()}
        self._conv_of_bn = dict(self._sited_bns)
        self.reset()

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
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            if self._fast:
                if name in self._wiring:  # type: ignore[operator]
                    self._held[name] = output  # its BatchNorm's output is the site
                else:
                    self.results[name] = self.reduce(name, output)  # type: ignore[misc]
                return None
            self.sites[name] = output
            passed = output.clone()
            self._keep.append(passed)  # keeps the id unique while this forward runs
            self._conv_by_id[id(passed)] = name
            return passed

        return hook

    def _bn_pre_hook(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if self._fast:
            name = self._conv_of_bn.get(id(module))
            if name is not None:
                held = self._held.pop(name, None)
                if held is None or not inputs or inputs[0] is not held:
                    self._broken = True
                else:
                    self._pending[id(module)] = name
            return
        name = self._conv_by_id.get(id(inputs[0])) if inputs else None
        if name is not None:
            self._pending[id(module)] = name

    def _bn_hook(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor
    ) -> Tensor | None:
        name = self._pending.pop(id(module), None)
        if name is None:
            return None
        if self._fast:
            self.results[name] = self.reduce(name, output)  # type: ignore[misc]
            return None
        self.sites[name] = output
        self._sited_bns[id(module)] = name
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
