"""Torchvision architecture families: what capl builds, small-input stems, unprunable layers.

Every classification network of ``torchvision.models`` is a CNN capl prunes, except the vision
transformers (ViT, Swin, MaxViT): their attention layers mix tokens, not channels a conv owns.
A family is named by the torchvision module that builds it (``resnet`` covers ResNet, ResNeXt
and Wide ResNet).
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from capl.errors import ConfigError

# builder module -> the layer that makes its networks unprunable by channel
TRANSFORMER_FAMILIES: dict[str, str] = {
    "vision_transformer": "nn.MultiheadAttention",
    "swin_transformer": "ShiftedWindowAttention",
    "maxvit": "RelativePositionalMultiHeadAttention",
}

# families whose forward adds auxiliary classifiers in training mode
AUX_FAMILIES: tuple[str, ...] = ("googlenet", "inception")


def family(name: str) -> str:
    """The torchvision module that builds network ``name`` (e.g. ``"resnet"``, ``"regnet"``)."""
    return tvm.get_model_builder(name).__module__.rsplit(".", 1)[-1]


def _classification_models() -> list[str]:
    return sorted(tvm.list_models(module=tvm))


TORCHVISION_CNNS: tuple[str, ...] = tuple(
    n for n in _classification_models() if family(n) not in TRANSFORMER_FAMILIES
)
TORCHVISION_TRANSFORMERS: tuple[str, ...] = tuple(
    n for n in _classification_models() if family(n) in TRANSFORMER_FAMILIES
)


def transformer_error(name: str) -> ConfigError:
    """The error for building or pruning the torchvision transformer ``name``."""
    layer = TRANSFORMER_FAMILIES[family(name)]
    return ConfigError(
        f"network {name!r} is a vision transformer: its {layer} layers mix tokens, which capl's "
        "channel pruning does not support; choose a CNN (e.g. resnet50, convnext_tiny, "
        "efficientnet_b0)"
    )


def _attention_types() -> tuple[type[nn.Module], ...]:
    from torchvision.models import maxvit, swin_transformer

    return (
        nn.MultiheadAttention,
        swin_transformer.ShiftedWindowAttention,  # V2 subclasses it
        maxvit.RelativePositionalMultiHeadAttention,
    )


def check_prunable(net: nn.Module) -> None:
    """Raise if ``net`` holds a layer capl cannot prune (token-mixing attention).

    Raises:
        ConfigError: Naming the first such layer and its type.
    """
    types = _attention_types()
    for name, module in net.named_modules():
        if isinstance(module, types):
            raise ConfigError(
                f"{type(net).__name__} has the attention layer {name} "
                f"({type(module).__name__}), which mixes tokens: capl prunes the channels of "
                "CNNs only; choose a CNN (e.g. resnet50, convnext_tiny, efficientnet_b0)"
            )


def builder_kwargs(name: str, pretrained: bool) -> dict[str, bool]:
    """Extra torchvision builder arguments.

    GoogLeNet and Inception v3 keep their auxiliary heads; randomly initialised ones ask for
    torchvision's truncated-normal init explicitly (its default is about to change), pretrained
    ones get the input transform their ImageNet weights were trained with.
    """
    if family(name) not in AUX_FAMILIES:
        return {}
    if pretrained:
        return {"transform_input": True, "init_weights": False}
    return {"init_weights": True}


def aux_head_types() -> tuple[type[nn.Module], ...]:
    """Module types of the auxiliary heads (GoogLeNet's and Inception v3's ``InceptionAux``)."""
    from torchvision.models.googlenet import InceptionAux as GoogLeNetAux
    from torchvision.models.inception import InceptionAux

    return (GoogLeNetAux, InceptionAux)


def small_input_stem(name: str, net: nn.Module) -> None:
    """Adapt ``net``'s stem to 8-32 pixel images, in place.

    A stride-2 first conv gets stride 1 (a large or patchify kernel becomes a 3x3 one) and a
    max-pool right after the stem goes; VGGs get ceil-mode pools and a 512-wide classifier.
    Inception v3 also keeps its second max-pool and pads its auxiliary head's 5x5 conv, so it
    runs (aux head included) from 32 pixels up.
    """
    fam = family(name)
    if fam == "resnet":
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif fam == "vgg":
        for i, layer in enumerate(net.features):
            if isinstance(layer, nn.MaxPool2d):
                # ceil_mode keeps 1x1 maps at 1x1, so 8x8 inputs survive all five pools
                net.features[i] = nn.MaxPool2d(2, 2, ceil_mode=True)
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        out = net.classifier[-1].out_features
        net.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(512, out),
        )  # fmt: skip
    elif fam == "alexnet":
        net.features[0] = nn.Conv2d(3, net.features[0].out_channels, 3, stride=1, padding=1)
    elif fam == "densenet":
        conv = net.features.conv0
        net.features.conv0 = nn.Conv2d(3, conv.out_channels, 3, stride=1, padding=1, bias=False)
        net.features.pool0 = nn.Identity()
    elif fam == "convnext":
        conv = net.features[0][0]
        net.features[0][0] = nn.Conv2d(3, conv.out_channels, 3, stride=1, padding=1)
    elif fam == "shufflenetv2":
        net.conv1[0].stride = (1, 1)
        net.maxpool = nn.Identity()
    elif fam == "googlenet":
        net.conv1.conv.stride = (1, 1)
        net.maxpool1 = nn.Identity()
    elif fam == "inception":
        net.Conv2d_1a_3x3.conv.stride = (1, 1)
        net.maxpool1 = nn.Identity()
        if net.AuxLogits is not None:
            net.AuxLogits.conv1.conv.padding = (2, 2)
    elif fam in ("regnet", "mnasnet", "squeezenet"):
        first = {"regnet": "stem.0", "mnasnet": "layers.0", "squeezenet": "features.0"}[fam]
        net.get_submodule(first).stride = (1, 1)
    else:  # mobilenet_v2/v3, efficientnet(_v2): first Conv2dNormActivation
        net.features[0][0].stride = (1, 1)
