"""Every torchvision classification CNN prunes, retrains and exports.

Each CNN of ``torchvision.models`` (random init, non-trivial BatchNorm statistics, a small input,
L1Norm scores, ``target: macs, ratio: 0.5``, a 3-class head) goes through plan, physical removal,
an exactness check, a train-mode forward and an ONNX export. What "exact" means:

- everywhere but ConvNeXt, the pruned network equals the original with every coupled copy of
  the removed channels zeroed (conv / linear rows, BN and LayerNorm affine terms, loose
  parameters such as ``layer_scale``);
- ConvNeXt normalises its trunk channels with LayerNorm, whose statistics change when channels
  go: there the pruned network equals the zeroed original whose LayerNorms take their statistics
  over the kept channels only, and the plan lists those LayerNorms (``renormalised``).

The smallest network of each family runs by default; the larger variants of the same families
are marked ``slow`` (``-m slow``), as their trace and export cost grows with their depth.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from capl.architectures import TORCHVISION_CNNS, TORCHVISION_TRANSFORMERS, family
from capl.benchmark.onnx_export import export_onnx
from capl.criteria import get_criterion
from capl.errors import ConfigError
from capl.models import (
    SUPPORTED_NETWORKS,
    aux_classifiers,
    build_network,
    cut_head,
    find_classifier,
    head_outputs,
    model_device,
)
from capl.pruning import PruningConfig, PruningPlan, apply_plan, make_plan, prunable_layers
from capl.pruning.structure import LayerCost, analyse
from capl.pruning.tracing import forward_all, out_channel_fn, static_index_maps, trace
from tests.conftest import randomise_batchnorm

ROWS = [3, 5, 7]
CLASSES = 10

# the smallest network of every family (and of every mechanism: grouped convs, SE, shuffle,
# concat, aux heads, conv classifier, LayerNorm) runs in the default suite
DEFAULT = {
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
    "googlenet", "inception_v3", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small",
    "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5",
    "squeezenet1_1", "vgg11_bn",
}  # fmt: skip

# (small_input stem, image size): the plain stem at 32 px where the network allows it;
# VGGs' small stem has the 512-wide classifier; AlexNet's small stem at 56 px leaves the 6x6 map
# its classifier expects (the legacy ONNX exporter needs that); Inception v3's aux head needs
# its small stem below 299 px
SETUP: dict[str, tuple[bool, int]] = {"alexnet": (True, 56), "inception_v3": (True, 32)}


def _setup(name: str) -> tuple[bool, int]:
    return SETUP.get(name, (family(name) == "vgg", 32))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small inputs: intra-op threads only add synchronisation on a shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _network(name: str) -> nn.Module:
    small, _ = _setup(name)
    torch.manual_seed(0)
    net = build_network(name, CLASSES, small_input=small).eval()
    randomise_batchnorm(net)
    if family(name) == "squeezenet":
        # its logits pass a ReLU; random init leaves them all zero, which would test nothing
        net.get_submodule(find_classifier(net)[0]).bias.data += 0.5
    return net


def _input(name: str, batch: int = 2) -> Tensor:
    size = _setup(name)[1]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))


def _plan(name: str, **config) -> tuple[nn.Module, PruningPlan, Tensor]:
    model, x = _network(name), _input(name)
    criterion = get_criterion("L1Norm")
    scores = criterion.score(model, prunable_layers(model, "filter"), {})
    settings = {"ratio": 0.5, "target": "macs"} | config
    plan = make_plan(
        model, criterion, scores, PruningConfig(**settings), x, head_rows=ROWS, network=name
    )
    return model, plan, x


def _zeroed(model: nn.Module, plan: PruningPlan, x: Tensor, renormalise: bool) -> nn.Module:
    """The unpruned network with every coupled copy of the removed channels zeroed.

    With ``renormalise``, each LayerNorm over removed channels also takes its statistics over
    the kept channels only (what the pruned LayerNorm computes).
    """
    ref = copy.deepcopy(model).eval()
    graph = trace(ref, x[:1])
    kept: dict[nn.LayerNorm, Tensor] = {}
    with torch.no_grad(), static_index_maps():
        for key, idxs in plan.removed:
            module = ref.get_submodule(key)
            group = graph.get_pruning_group(module, out_channel_fn(graph, module), idxs)
            for item in group.items:
                node, index = item.dep.target, torch.as_tensor(list(item.idxs), dtype=torch.long)
                target = node.module
                if isinstance(target, nn.LayerNorm):
                    mask = kept.setdefault(target, torch.ones(target.weight.numel(), dtype=bool))
                    mask[index] = False
                if not graph.is_out_channel_pruning_fn(item.dep.handler):
                    continue
                if isinstance(target, nn.Parameter):
                    target.index_fill_(node.pruning_dim, index, 0)
                elif isinstance(target, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm)):
                    target.weight[index] = 0
                    if target.bias is not None:
                        target.bias[index] = 0
    if renormalise:
        for norm, mask in kept.items():
            norm.forward = _kept_channel_norm(norm, mask)
    return ref


def _kept_channel_norm(norm: nn.LayerNorm, keep: Tensor):
    from torchvision.models.convnext import LayerNorm2d

    channels_first = isinstance(norm, LayerNorm2d)

    def forward(x: Tensor) -> Tensor:
        if channels_first:
            x = x.permute(0, 2, 3, 1)
        y = torch.zeros_like(x)
        width = (int(keep.sum()),)
        y[..., keep] = F.layer_norm(
            x[..., keep], width, norm.weight[keep], norm.bias[keep], norm.eps
        )
        return y.permute(0, 3, 1, 2) if channels_first else y

    return forward


def _assert_close(got: Tensor, want: Tensor) -> None:
    scale = float(want.abs().max())
    assert scale > 0, "degenerate reference output"
    torch.testing.assert_close(got, want, atol=1e-4 * scale, rtol=1e-4)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _marks(name: str) -> list:
    return [] if name in DEFAULT else [pytest.mark.slow]


# ---------------------------------------------------------------------------------------------
# every CNN


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=_marks(n)) for n in TORCHVISION_CNNS]
)  # fmt: skip
def test_every_torchvision_cnn_prunes_retrains_and_exports(name: str, tmp_path) -> None:
    _enough_memory(name)
    model, plan, x = _plan(name)
    report, selection = plan.report, plan.report["selection"]
    # the MAC target: layer scope moves every group at once, so it lands within a step of it
    assert 0.49 <= report["macs_removed_fraction"] <= 0.57, report["macs_removed_fraction"]
    # the cost model the search used is exact (grouped convs, aux heads, norms included)
    assert selection["estimated_macs_removed_fraction"] == pytest.approx(
        report["macs_removed_fraction"], abs=1e-12
    )
    assert selection["estimated_params_removed_fraction"] == pytest.approx(
        report["params_removed_fraction"], abs=1e-12
    )
    assert bool(selection["renormalised"]) == (family(name) == "convnext")
    first = analyse(model, x).conv_order[0]
    aux = len(aux_classifiers(model))

    pruned = apply_plan(copy.deepcopy(model), plan, x[:1]).eval()
    assert _params(pruned) < _params(model)
    for key, idxs in plan.removed:
        before = model.get_submodule(key).out_channels
        assert pruned.get_submodule(key).out_channels == before - len(idxs)
    with torch.no_grad():
        got = pruned(x)
        want = _zeroed(model, plan, x, renormalise=True)(x)[:, ROWS]
    del model  # the largest networks need the memory
    _assert_close(got, want)
    # every classifier (aux heads' too) holds the selected classes' rows only
    for head in (find_classifier(pruned)[0], *aux_classifiers(pruned)):
        assert head_outputs(pruned.get_submodule(head)) == len(ROWS), head

    size = _setup(name)[1]
    info = export_onnx(pruned, tmp_path / "pruned.onnx", (3, size, size), exporter="torchscript")
    session = ort.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"input": x.numpy()})[0]
    _assert_close(torch.from_numpy(np.asarray(onnx_out)), got)

    # retraining: a train-mode forward and backward (aux heads' logits included)
    out = pruned.train()(x)
    outputs = list(out) if isinstance(out, tuple) else [out]
    assert [tuple(o.shape) for o in outputs] == [(2, len(ROWS))] * (1 + aux)
    sum(o.square().mean() for o in outputs).backward()
    grad = pruned.get_submodule(first).weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)


def _enough_memory(name: str) -> None:
    """Skip a network whose copies (original, pruned, reference) would not fit in memory."""
    params = {"regnet_y_128gf": 645e6}.get(name)
    if params is None:
        return
    need = params * 4 * 6  # float32, about six live copies at the peak (graph, plan report)
    with open("/proc/meminfo") as f:
        free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    if free < need:
        pytest.skip(f"{name} needs about {need / 2**30:.0f} GiB free, {free / 2**30:.0f} GiB are")


# ---------------------------------------------------------------------------------------------
# grouped convolutions


def test_grouped_convs_lose_the_same_channels_in_every_group() -> None:
    model, plan, x = _plan("regnet_x_400mf")
    pruned = apply_plan(copy.deepcopy(model), plan, x[:1])
    structure = analyse(model, x)
    tied = {g.key: g for g in structure.groups if g.units is not None}
    assert tied, "regnet's grouped convs tie no channels"
    removed = dict(plan.removed)
    grouped = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels
    ]
    assert grouped
    for name in grouped:
        before, after = model.get_submodule(name), pruned.get_submodule(name)
        assert after.groups == before.groups  # groups kept, each one narrower
        assert after.in_channels % after.groups == 0 and after.out_channels % after.groups == 0
    for key, group in tied.items():
        if key not in removed:
            continue
        units = {tuple(u) for u in group.units.tolist()}
        chosen = set(removed[key])
        # whole units only: the same local channels of every conv group
        assert all(set(u) <= chosen or not set(u) & chosen for u in units)
        assert len(chosen) % group.unit == 0


def test_grouped_conv_cost_and_a_plan_that_splits_groups() -> None:
    conv = LayerCost("conv", 64, 64, groups=8, kernel=9, positions=16, bias=False, order=0)
    assert conv.grouped and not conv.depthwise
    assert conv.macs(32, 48) == 16 * 32 * (48 // 8) * 9
    assert conv.params(32, 48) == 32 * 9 * (48 // 8)
    model, plan, x = _plan("regnet_x_400mf")
    structure = analyse(model, x)
    group = next(g for g in structure.groups if g.units is not None)
    # a hand-edited plan: one channel of the first conv group only
    bad = PruningPlan.from_dict(
        {**plan.to_dict(), "removed": [[group.key, [0]]], "head_rows": None}
    )
    with pytest.raises(
        ConfigError, match=r"different .* channels in the .* groups of the grouped conv"
    ):
        apply_plan(copy.deepcopy(model), bad, x[:1])


# ---------------------------------------------------------------------------------------------
# conv classifier, auxiliary heads


def test_squeezenet_conv_classifier_is_found_kept_and_cut() -> None:
    model, x = _network("squeezenet1_1"), _input("squeezenet1_1")
    name, head = find_classifier(model)
    assert name == "classifier.1" and isinstance(head, nn.Conv2d)
    assert name not in prunable_layers(model, "filter")
    assert all(name not in g.members for g in analyse(model, x).groups)  # outputs never pruned
    cut = copy.deepcopy(model)
    cut_head(cut, ROWS)
    with torch.no_grad():
        torch.testing.assert_close(cut(x), model(x)[:, ROWS])


def test_aux_heads_follow_the_trunk_and_keep_their_insides() -> None:
    model, plan, x = _plan("googlenet")
    structure = analyse(model, x)
    assert set(structure.kept.values()) == {"it lies inside an auxiliary head"}
    assert {k.split(".")[0] for k in structure.kept} == {"aux1", "aux2"}
    assert not any(n.startswith("aux") for n in prunable_layers(model, "filter"))
    pruned = apply_plan(copy.deepcopy(model), plan, x[:1]).eval()
    for head, feeds in (("aux1", "inception4a"), ("aux2", "inception4d")):
        width = sum(
            pruned.get_submodule(f"{feeds}.{b}").conv.out_channels
            for b in ("branch1", "branch2.1", "branch3.1", "branch4.1")
        )
        assert pruned.get_submodule(f"{head}.conv.conv").in_channels == width
        assert pruned.get_submodule(f"{head}.conv.conv").out_channels == 128  # insides kept
    # the aux heads' logits are exact too: the zeroed original's, at the selected rows
    reference = _zeroed(model, plan, x, renormalise=False)
    with torch.no_grad():
        got, want = forward_all(pruned, x), forward_all(reference, x)
    for g, w in zip(got, want):
        _assert_close(g, w[:, ROWS])


# ---------------------------------------------------------------------------------------------
# channel shuffle, LayerNorm over channels, transformers


def test_shufflenet_prunes_what_the_shuffle_leaves_consistent() -> None:
    model, plan, x = _plan("shufflenet_v2_x0_5")
    structure = analyse(model, x)
    # the widths that pass a shuffle are kept: each stage's trunk, keyed by its first block
    assert set(structure.kept.values()) == {"its channels pass a channel shuffle"}
    assert sorted(structure.kept) == sorted(
        f"stage{s}.0.branch{b}" for s in (2, 3, 4) for b in ("1.2", "2.5")
    )
    pruned = apply_plan(copy.deepcopy(model), plan, x[:1])
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        after = pruned.get_submodule(name)
        if name.endswith(("branch1.2", "branch2.5")):  # trunk producers
            assert after.out_channels == module.out_channels, name
    # branch insides, the stem and the last conv are pruned
    for name in ("conv1.0", "stage2.1.branch2.0", "stage4.3.branch2.3", "conv5.0"):
        assert pruned.get_submodule(name).out_channels < model.get_submodule(name).out_channels
    trunk = next(iter(structure.kept))
    bad = PruningPlan.from_dict({**plan.to_dict(), "removed": [[trunk, [0, 1]]]})
    with pytest.raises(ConfigError, match="channel shuffle"):
        apply_plan(copy.deepcopy(model), bad, x[:1])


def test_convnext_layernorm_is_renormalised_not_zeroed(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="capl.pruning.plan"):
        model, plan, x = _plan("convnext_tiny")
    assert "not the original with those channels zeroed" in caplog.text
    renormalised = plan.report["selection"]["renormalised"]
    assert "features.0.1" in renormalised and "classifier.0" in renormalised
    pruned = apply_plan(copy.deepcopy(model), plan, x[:1]).eval()
    with torch.no_grad():
        got = pruned(x)
        zeroed = _zeroed(model, plan, x, renormalise=False)(x)[:, ROWS]
        renorm = _zeroed(model, plan, x, renormalise=True)(x)[:, ROWS]
    _assert_close(got, renorm)  # what holds
    assert float((got - zeroed).abs().max()) > 1e-3 * float(zeroed.abs().max())  # what does not


def test_transformers_are_refused_naming_the_layer() -> None:
    from torchvision.models import SwinTransformer, VisionTransformer

    assert set(SUPPORTED_NETWORKS) >= set(TORCHVISION_CNNS)
    assert not set(SUPPORTED_NETWORKS) & set(TORCHVISION_TRANSFORMERS)
    assert len(TORCHVISION_CNNS) >= 60 and {"vit_b_16", "swin_t", "maxvit_t"} <= set(
        TORCHVISION_TRANSFORMERS
    )
    layers = {"vit": "MultiheadAttention", "swin": "ShiftedWindowAttention",
              "maxvit": "RelativePositionalMultiHeadAttention"}  # fmt: skip
    for name in TORCHVISION_TRANSFORMERS:
        with pytest.raises(ConfigError, match=layers[name.split("_")[0]]) as info:
            build_network(name, CLASSES)
        assert "\n" not in str(info.value)
    # a transformer built elsewhere is refused before tracing, naming its attention layer
    tiny = [
        (VisionTransformer(32, 16, 1, 1, 8, 8, num_classes=CLASSES), "MultiheadAttention"),
        (
            SwinTransformer([4, 4], 8, [2], [1], [2, 2], num_classes=CLASSES),
            "ShiftedWindowAttention",
        ),
    ]
    criterion = get_criterion("L1Norm")
    for net, layer in tiny:
        net.eval()
        scores = criterion.score(net, prunable_layers(net, "filter"), {})
        with pytest.raises(ConfigError, match=rf"attention layer .*{layer}"):
            make_plan(net, criterion, scores, PruningConfig(0.5), torch.randn(1, 3, 32, 32))


# ---------------------------------------------------------------------------------------------
# small-input stems


@pytest.mark.parametrize("name", sorted(DEFAULT))
def test_small_input_stem_runs_at_32_pixels(name: str) -> None:
    torch.manual_seed(0)
    plain = build_network(name, CLASSES)
    small = build_network(name, CLASSES, small_input=True).eval()
    assert plain.state_dict().keys() == small.state_dict().keys()
    first = next(m for m in small.modules() if isinstance(m, nn.Conv2d))
    assert first.stride == (1, 1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert small(x).shape == (2, CLASSES)
    out = small.train()(x)
    outputs = list(out) if isinstance(out, tuple) else [out]
    assert all(o.shape == (2, CLASSES) for o in outputs)


def test_model_device_reads_parameters_then_buffers() -> None:
    """One helper for every caller: a module's device from its parameters, else its buffers."""
    on_meta = nn.BatchNorm2d(4, affine=False, device="meta")  # buffers only
    assert not list(on_meta.parameters())
    assert model_device(on_meta) == torch.device("meta")
    assert model_device(nn.Sequential(nn.Conv2d(3, 4, 1, device="meta"))) == torch.device("meta")
    assert model_device(nn.ReLU()) == torch.device("cpu")
