"""LRP relevance of filters for the chosen classes (Yeom et al., 2021), via zennit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.models.efficientnet import MBConv
from torchvision.models.mobilenetv3 import InvertedResidual
from torchvision.ops.misc import SqueezeExcitation
from zennit.canonizers import AttributeCanonizer, Canonizer, SequentialMergeBatchNorm
from zennit.composites import LayerMapComposite, SpecialFirstLayerMapComposite
from zennit.core import Composite, ParamMod
from zennit.layer import Sum
from zennit.rules import AlphaBeta, Epsilon, Norm, Pass, ZBox, ZPlus
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation, AvgPool, BatchNorm, Convolution
from zennit.types import Linear as LinearType

from capl.criteria._activations import (
    ActivationSites,
    conv_layers,
    iter_batches,
    new_stat,
    rows_tensor,
)
from capl.criteria.base import Batch, Criterion, run_in_eval
from capl.models import model_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LRP(Criterion):
    """Score a filter by the LRP relevance reaching its output for the target classes.

    Yeom et al., "Pruning by Explaining: A Novel Criterion for Deep Neural Network Pruning",
    Pattern Recognition 115, 2021. For each image, relevance starts at the logit of its own class
    (``target_rows[label]``, an index of the *original* head, never a renumbered one) and is
    propagated with LRP rules implemented by zennit; a filter's score is the relevance at its conv
    output summed over H x W and over all calibration images. Scores are normalised per layer
    (sum) before global ranking, as in the paper.

    Rule sets (``rules="auto"`` picks ``"zplus"`` for networks without BatchNorm, else
    ``"composite"``):

    - ``"zplus"`` (plain conv nets such as VGG16 without BN): LRP-z+ for every Conv2d and Linear,
      average pooling by the epsilon-like ``Norm`` rule, max pooling winner-take-all (gradient),
      activations pass relevance through. BatchNorms that follow a conv, should the network have
      any, are folded into it first (as in ``"composite"``), so z+ sees the conv+BN it explains.
    - ``"composite"`` (BN and/or residual nets: ResNet, VGG16-BN, MobileNetV3, EfficientNet):
      BatchNorms folded into the preceding convs (zennit canonizers), alpha1-beta0 for convs,
      z-beta (``ZBox``, bounds from the input normalisation ``mean``/``std`` of pixels in [0, 1])
      for the first conv, epsilon for Linear, ``Norm`` (epsilon without parameters) for average
      pooling and residual additions (ResNet via zennit's ``ResNetCanonizer``; MobileNetV3
      ``InvertedResidual`` and EfficientNet ``MBConv`` via a canonizer of this module).
      Activations (ReLU, Hardswish, SiLU, Hardsigmoid, Sigmoid) pass relevance unchanged
      (zennit's ``Pass``). The squeeze-excitation product ``scale * x`` splits relevance equally
      between the feature path and the gate path (conservative, and the SE convs get relevance);
      dropout and stochastic depth are identities in eval mode.

    Biases: with ``zero_params="bias"`` (the default, as the reference implementation of the
    paper does) every rule ignores the layers' biases, including those a folded BatchNorm
    leaves, so no bias absorbs relevance and the z+ rules conserve it layer by layer.
    ``zero_params=None`` is zennit's default: positive biases then take a share of the relevance
    (z+, alpha-beta), and scores of layers with large biases shrink.

    The rules' stabilisers are absolute (``epsilon`` and zennit's 1e-6), so on an *untrained*
    network whose activations shrink to ~1e-10 (randomly initialised MobileNetV3 with identity BN
    statistics) the relevance is swallowed and scores are ~0; trained networks are unaffected.

    Canonizers modify the model only inside :meth:`collect` and are undone afterwards; the
    weights and buffers are left bitwise unchanged. Gradients are taken w.r.t. activations only.

    Args:
        rules: Rule set, see above.
        mean: Per-channel input normalisation mean (defines the ``ZBox`` bounds).
        std: Per-channel input normalisation std.
        epsilon: Stabiliser of the epsilon rule for Linear layers.
        init: Initial relevance at the target logit: its value (``"logit"``, LRP's definition) or
            ``"one"`` (every image counts equally, whatever its logit).
        zero_params: ``"bias"`` (default): the rules ignore biases (see above); ``None``: biases
            take part as in zennit's defaults.
        aggregate: How a filter's relevance is summed over positions and images: ``"signed"``
            (default, the paper's filter relevance; negative evidence lowers the score) or
            ``"abs"`` (sum of ``|R|``, as the reference implementation's ResNet path does).

    Stats: ``"<layer>/relevance"`` (float64 ``[C]``) and ``"images"`` (int64 scalar).
    """

    granularity = "filter"
    requires_data = True
    class_aware = True
    normalization = "sum"

    def __init__(
        self,
        rules: Literal["auto", "zplus", "composite"] = "auto",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        epsilon: float = 1e-6,
        init: Literal["logit", "one"] = "logit",
        zero_params: Literal["bias"] | None = "bias",
        aggregate: Literal["signed", "abs"] = "signed",
    ) -> None:
        if rules not in ("auto", "zplus", "composite"):
            raise ValueError(f"LRP rules must be auto, zplus or composite, got {rules!r}")
        if init not in ("logit", "one"):
            raise ValueError(f"LRP init must be logit or one, got {init!r}")
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError("LRP mean and std need the same length and std > 0")
        if zero_params not in ("bias", None):
            raise ValueError(f"LRP zero_params must be bias or null, got {zero_params!r}")
        if aggregate not in ("signed", "abs"):
            raise ValueError(f"LRP aggregate must be signed or abs, got {aggregate!r}")
        self.zero_params = zero_params
        self.aggregate = aggregate
        self.rules = rules
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.epsilon = float(epsilon)
        self.init = init

    def rule_set(self, model: nn.Module) -> Literal["zplus", "composite"]:
        """The rule set used for ``model`` (resolves ``"auto"``)."""
        if self.rules != "auto":
            return self.rules
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        return "composite" if has_bn else "zplus"

    def composite(self, model: nn.Module) -> Composite:
        """The zennit composite (rules and canonizers) for ``model``."""
        zero = self.zero_params
        if self.rule_set(model) == "zplus":
            return LayerMapComposite(
                layer_map=[
                    (Activation, Pass()),
                    (AvgPool, Norm()),
                    (BatchNorm, Pass()),  # identities once folded
                    (Convolution, _ZPlus(zero_params=zero)),
                    (LinearType, _ZPlus(zero_params=zero)),
                ],
                canonizers=[
                    SequentialMergeBatchNorm(),
                    _ResidualSumCanonizer(),
                    _SqueezeExcitationCanonizer(),
                ],
            )
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        if first.in_channels == len(self.mean):
            shape = (1, len(self.mean), 1, 1)
            mean = torch.tensor(self.mean).view(shape)
            std = torch.tensor(self.std).view(shape)
            low: Tensor | float = (0 - mean) / std
            high: Tensor | float = (1 - mean) / std
        else:  # input channels do not match the normalisation: use the widest box
            low = min((0 - m) / s for m, s in zip(self.mean, self.std))
            high = max((1 - m) / s for m, s in zip(self.mean, self.std))
        canonizers: list[Canonizer] = [
            SequentialMergeBatchNorm(),
            *ResNetCanonizer().canonizers[1:],  # residual Sum modules (BN merge already above)
            _ResidualSumCanonizer(),
            _SqueezeExcitationCanonizer(),
        ]
        return SpecialFirstLayerMapComposite(
            layer_map=[
                (Activation, Pass()),
                (Sum, Norm()),
                (AvgPool, Norm()),
                (BatchNorm, Pass()),
                (Convolution, _alpha_beta(alpha=1.0, beta=0.0, zero_params=zero)),
                (LinearType, Epsilon(epsilon=self.epsilon, zero_params=zero)),
            ],
            first_map=[(Convolution, ZBox(low=low, high=high, zero_params=zero))],
            canonizers=canonizers,
        )

    def collect(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        layers: dict[str, nn.Module],
        target_rows: Sequence[int],
    ) -> dict[str, Tensor]:
        """Sum the relevance at each conv output over ``batches``."""
        convs = conv_layers(layers)
        device = model_device(model)
        rows = rows_tensor(target_rows, device)
        stats = {
            f"{n}/relevance": new_stat(c.out_channels, device, torch.float64)
            for n, c in convs.items()
        }
        images_seen = new_stat((), device, torch.int64)
        composite = self.composite(model)
        # BNs are folded into the convs here, so the conv output is the activation site
        with (
            run_in_eval(model),
            composite.context(model),
            ActivationSites(model, convs, follow_bn=False) as rec,
            torch.enable_grad(),
        ):
            for images, labels in iter_batches(batches, device):
                rec.reset()
                logits = model(images.requires_grad_(True))
                target = logits.gather(1, rows[labels][:, None]).squeeze(1)
                start = target.detach() if self.init == "logit" else torch.ones_like(target)
                for name, relevance in rec.gradients(target, grad_outputs=start):
                    if self.aggregate == "abs":
                        relevance = relevance.abs()
                    stats[f"{name}/relevance"] += relevance.sum(dim=(0, 2, 3), dtype=torch.float64)
                images_seen += images.shape[0]
                rec.reset()
        stats["images"] = images_seen
        return stats

    def score(
        self, model: nn.Module, layers: dict[str, nn.Module], stats: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Return the summed relevance per output channel."""
        return {n: stats[f"{n}/relevance"].clone() for n in conv_layers(layers)}


class _HalfSplitProduct(torch.autograd.Function):
    """``scale * x`` whose backward hands half the relevance to each factor.

    In zennit the backward signal is relevance itself, so returning ``R / 2`` for ``x`` and the
    spatial sum of ``R / 2`` for the per-channel ``scale`` conserves relevance.
    """

    @staticmethod
    def forward(ctx: Any, scale: Tensor, x: Tensor) -> Tensor:
        ctx.scale_shape = scale.shape
        return scale * x

    @staticmethod
    def backward(ctx: Any, relevance: Tensor) -> tuple[Tensor, Tensor]:
        half = relevance / 2
        to_scale = half.sum(dim=tuple(range(2, half.ndim)), keepdim=True).reshape(ctx.scale_shape)
        return to_scale, half


def _se_forward(self: SqueezeExcitation, x: Tensor) -> Tensor:
    return _HalfSplitProduct.apply(self._scale(x), x)


def _residual_forward(self: nn.Module, x: Tensor) -> Tensor:
    out = self.block(x)
    if hasattr(self, "stochastic_depth"):
        out = self.stochastic_depth(out)
    return self.canonizer_sum(torch.stack([x, out], dim=-1))


class _SqueezeExcitationCanonizer(AttributeCanonizer):
    """Route torchvision's squeeze-excitation product through :class:`_HalfSplitProduct`."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, SqueezeExcitation):
            return {"forward": _se_forward.__get__(module)}
        return None

    def copy(self) -> _SqueezeExcitationCanonizer:
        return _SqueezeExcitationCanonizer()


class _ResidualSumCanonizer(AttributeCanonizer):
    """Make MobileNetV3/EfficientNet residual additions a zennit ``Sum`` module (epsilon rule)."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, (InvertedResidual, MBConv)) and module.use_res_connect:
            return {"forward": _residual_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    def copy(self) -> _ResidualSumCanonizer:
        return _ResidualSumCanonizer()


class _ZPlus(ZPlus):
    """zennit's ``ZPlus`` (= alpha1-beta0), one term when the layer's input is non-negative.

    Z+ splits the input into ``x+ = max(x, 0)`` and ``x- = min(x, 0)`` and runs a modified
    forward and gradient for each. After a ReLU (every conv but the first in a ResNet or VGG)
    ``x-`` is zero: its output ``W- x-`` is zero, adds nothing to the denominator, and its
    relevance ``x- * grad`` is zero, so the ``x+`` term alone gives the same values while
    running half the convolutions. Inputs with negative entries (Hardswish, SiLU) take zennit's
    two-term path.
    """

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
        original = self.stored_tensors["input"][0]
        if bool((original < 0).any()):
            return super().backward(module, grad_input, grad_output)
        inputs = self.input_modifiers[0](original.clone()).requires_grad_()
        with ParamMod.ensure(self.param_modifiers[0])(module) as modified, torch.enable_grad():
            output = self.output_modifiers[0](modified.forward(inputs))
        (upper,) = self.gradient_mapper(grad_output[0], [output])[:1]
        (gradient,) = torch.autograd.grad(
            output, inputs, grad_outputs=upper, create_graph=grad_output[0].requires_grad
        )
        relevance = inputs * gradient
        return tuple(relevance if g.shape == relevance.shape else None for g in grad_input)


def _alpha_beta(alpha: float, beta: float, zero_params: str | None = None) -> AlphaBeta | ZPlus:
    """The alpha-beta rule; Z+ (:class:`_ZPlus`) when ``alpha == 1`` and ``beta == 0``.

    zennit's ``ZPlus`` is ``AlphaBeta(alpha=1, beta=0)`` term for term (same modified inputs and
    weights, stabiliser and reducer) without the two beta terms, whose forward and gradient
    passes ``AlphaBeta`` still runs only to multiply them by zero.
    """
    if beta == 0 and alpha == 1:
        return _ZPlus(zero_params=zero_params)
    return AlphaBeta(alpha=alpha, beta=beta, zero_params=zero_params)
