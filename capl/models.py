"""Torchvision network factory with small-input stems, weights loading and class-subset heads."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from capl.architectures import (
    TORCHVISION_CNNS,
    TORCHVISION_TRANSFORMERS,
    aux_head_types,
    builder_kwargs,
    small_input_stem,
    transformer_error,
)
from capl.checkpoints import load_checkpoint, state_dict_of
from capl.errors import ConfigError

log = logging.getLogger(__name__)

CIFAR_RESNETS: dict[str, int] = {"resnet20": 20, "resnet32": 32, "resnet56": 56}

SUPPORTED_NETWORKS: tuple[str, ...] = (*CIFAR_RESNETS, *TORCHVISION_CNNS)

IMAGENET_CLASSES = 1000


def build_network(
    name: str,
    num_classes: int,
    small_input: bool = False,
    weights: str | None = None,
    trust_weights: bool = False,
) -> nn.Module:
    """Build a torchvision classification network.

    Args:
        name: Architecture name, one of :data:`SUPPORTED_NETWORKS`: the CIFAR ResNets and every
            torchvision classification CNN (``torchvision.models.list_models`` without the
            vision transformers).
        num_classes: Number of output rows of the classifier (and of any auxiliary head).
        small_input: Adapt the stem to 8-32 pixel images
            (:func:`capl.architectures.small_input_stem`): a stride-1 first conv (3x3 where
            the kernel is large or a patchify one) and no stem max-pool; VGGs ceil-mode pools,
            a global average pool and a 512-wide classifier.
        weights: ``None`` (random init), a torchvision weights name (``"DEFAULT"``,
            ``"IMAGENET1K_V1"`` or ``"ResNet18_Weights.IMAGENET1K_V1"``), or the path of a local
            state_dict / Lightning checkpoint.
        trust_weights: Load a local file with full unpickling (it may run code); by default
            only tensors and plain values are read.

    Returns:
        The network, in train mode.

    Raises:
        ConfigError: Unknown architecture, a vision transformer, unavailable weights, or a
            checkpoint that does not fit.
    """
    if name in TORCHVISION_TRANSFORMERS:
        raise transformer_error(name)
    if name not in SUPPORTED_NETWORKS:
        raise ConfigError(
            f"unknown network {name!r}: choose one of {', '.join(SUPPORTED_NETWORKS)}"
        )
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if name in CIFAR_RESNETS:
        net = CifarResNet(CIFAR_RESNETS[name], num_classes)
        if weights is not None:
            load_weights_file(net, weights, trust_weights)
        return net
    local = weights is not None and (
        os.sep in weights or Path(weights).suffix in {".pt", ".pth", ".ckpt"}
    )
    hub_weights = None if weights is None or local else _torchvision_weights(name, weights)
    net = tvm.get_model(
        name,
        weights=None,
        num_classes=IMAGENET_CLASSES if hub_weights else num_classes,
        **builder_kwargs(name, pretrained=hub_weights is not None),
    )
    if hub_weights is not None:
        net.load_state_dict(_download_state_dict(name, hub_weights))
        if num_classes != IMAGENET_CLASSES:
            _replace_classifier(net, num_classes)
    if small_input:
        small_input_stem(name, net)
    if local:
        load_weights_file(net, weights, trust_weights)
    return net


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016): 6n+2 layers in three stages of 16, 32 and 64 channels.

    Built from torchvision's ``BasicBlock`` with 1x1-conv + BN projection shortcuts, so it prunes
    like the torchvision ResNets. It always has a small-input stem (3x3, stride 1).

    Args:
        depth: 20, 32, 56, ... (``depth - 2`` divisible by 6).
        num_classes: Classifier outputs.
    """

    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = 16
        self.layer1 = self._stage(16, blocks, 1)
        self.layer2 = self._stage(32, blocks, 2)
        self.layer3 = self._stage(64, blocks, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        from torchvision.models.resnet import BasicBlock

        layers = []
        for i in range(blocks):
            downsample = None
            if i == 0 and (stride != 1 or self.inplanes != planes):
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            layers.append(BasicBlock(self.inplanes, planes, stride if i == 0 else 1, downsample))
            self.inplanes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _torchvision_weights(name: str, weights: str) -> tvm.WeightsEnum:
    try:
        return tvm.get_model_weights(name)[weights.split(".")[-1]]
    except KeyError:
        valid = ", ".join(w.name for w in tvm.get_model_weights(name))
        raise ConfigError(
            f"unknown weights {weights!r} for {name}: use one of {valid}, DEFAULT, "
            "or a local file path"
        ) from None


def _download_state_dict(name: str, weights: tvm.WeightsEnum) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # urllib and hub raise many types; all mean "not available here"
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise ConfigError(
            f"could not load torchvision weights {weights} for {name} ({type(err).__name__}): "
            "put the "
            f"file {Path(weights.url).name} in {hub} or pass a local checkpoint path as weights"
        ) from None


def load_weights_file(net: nn.Module, path: str, trusted: bool = False) -> None:
    """Load a state_dict or a Lightning checkpoint (``network.`` prefixed keys) into ``net``.

    The file is read with ``weights_only=True`` (it cannot run code) unless ``trusted``.

    Raises:
        ConfigError: Missing or damaged file, one that needs full unpickling while not
            ``trusted``, or keys/shapes that do not match the network.
    """
    state = state_dict_of(load_checkpoint(path, trusted=trusted), path)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = (str(err).strip().splitlines()[1:2] or [str(err)])[0].strip()
        if len(first) > 160:  # a list of every missing key says no more than its start
            first = first[:157] + "..."
        raise ConfigError(
            f"weights in {path} do not match this network ({first}): check network, "
            "num_classes and small_input"
        ) from None


def _replace_classifier(net: nn.Module, num_classes: int) -> None:
    for name in (find_classifier(net)[0], *aux_classifiers(net)):
        net.set_submodule(name, _with_rows(net.get_submodule(name), num_classes, None))


def find_classifier(net: nn.Module) -> tuple[str, nn.Linear | nn.Conv2d]:
    """Return the qualified name and module of the network's classifier.

    The classifier is the last registered ``nn.Linear`` / ``nn.Conv2d`` outside auxiliary heads
    when that is a Linear or a 1x1 convolution producing the logits (SqueezeNet); otherwise the
    last Linear.

    Raises:
        ConfigError: The network has neither.
    """
    aux = _aux_head_names(net)
    layers = [
        (n, m)
        for n, m in net.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not _inside(n, aux)
    ]
    if layers and _is_head(layers[-1][1]):
        return layers[-1]
    linears = [(n, m) for n, m in layers if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"{type(net).__name__} has no classifier to evaluate or cut: its last layer must be "
            "an nn.Linear or a 1x1 nn.Conv2d producing the logits"
        )
    return linears[-1]


def _is_head(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return module.kernel_size == (1, 1) and module.groups == 1


def _aux_head_names(net: nn.Module) -> list[str]:
    types = aux_head_types()
    return [n for n, m in net.named_modules() if n and isinstance(m, types)]


def _inside(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def aux_heads(net: nn.Module) -> list[str]:
    """Names of the auxiliary heads (GoogLeNet's ``aux1``/``aux2``, Inception's ``AuxLogits``).

    They run only in training mode and add logits of their own; pruning adapts their inputs,
    keeps their insides, and :func:`cut_head` cuts their classifiers too.
    """
    return _aux_head_names(net)


def aux_classifiers(net: nn.Module) -> list[str]:
    """Qualified names of the auxiliary heads' classifiers (each head's last Linear)."""
    out = []
    for head in _aux_head_names(net):
        linears = [
            n for n, m in net.get_submodule(head).named_modules() if isinstance(m, nn.Linear)
        ]
        if linears:
            out.append(f"{head}.{linears[-1]}")
    return out


def head_outputs(module: nn.Module) -> int:
    """Output rows (logits) of a classifier from :func:`find_classifier`."""
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _with_rows(old: nn.Module, count: int, rows: list[int] | None) -> nn.Module:
    """A copy of classifier ``old`` with ``count`` outputs: ``rows`` copied, or fresh init."""
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, count, bias=old.bias is not None)
    else:
        new = nn.Conv2d(
            old.in_channels, count, old.kernel_size, old.stride, old.padding, old.dilation,
            bias=old.bias is not None,
        )  # fmt: skip
    new = new.to(old.weight)
    if rows is not None:
        index = torch.tensor(rows, device=old.weight.device)
        with torch.no_grad():
            new.weight.copy_(old.weight.index_select(0, index))
            if old.bias is not None:
                new.bias.copy_(old.bias.index_select(0, index))
    return new


def cut_head(net: nn.Module, rows: list[int]) -> None:
    """Replace the classifier by one holding only ``rows`` of it (copied, not re-initialised).

    The cut network's k-way logits equal the original network's logits at ``rows``. Auxiliary
    heads' classifiers with as many outputs are cut to the same rows, so their training losses
    stay on the selected classes.

    Args:
        net: Network whose classifier (a Linear or a 1x1 conv) is cut in place.
        rows: Row indices of the current classifier to keep, in output order.
    """
    name, old = find_classifier(net)
    outputs = head_outputs(old)
    if not rows or len(set(rows)) != len(rows) or not all(0 <= r < outputs for r in rows):
        raise ConfigError(
            f"head rows {rows} are invalid for a classifier with {outputs} outputs: "
            "give distinct indices in range"
        )
    for head in (name, *aux_classifiers(net)):
        module = net.get_submodule(head)
        if head_outputs(module) == outputs:
            net.set_submodule(head, _with_rows(module, len(rows), rows))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless module)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
