"""Tests of the pruning criteria: the shared contract, then each criterion on known data."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import Tensor, nn

from capl.criteria import (
    LRP,
    OCAP,
    APoZ,
    BNScale,
    IntraKernel,
    KernelMagnitude,
    L1Norm,
    Magnitude,
    Random,
    Taylor,
    available_criteria,
    get_criterion,
)
from capl.criteria._activations import ActivationSites, all_convs, following_batchnorms
from capl.errors import ConfigError
from capl.models import build_network, cut_head

ARCHS = ["resnet18", "resnet50", "vgg16", "vgg16_bn", "mobilenet_v3_large", "efficientnet_b0"]
ROWS = [3, 5, 7, 9]


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _network(arch: str) -> nn.Module:
    torch.manual_seed(0)
    net = build_network(arch, 10, small_input=True)
    with torch.no_grad():  # non-trivial BN statistics so that folding BN is really exercised
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net.train()  # criteria must switch to eval themselves and restore this


def _data(n: int = 4, size: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen), torch.randint(
        0, len(ROWS), (n,), generator=gen
    )


def _snapshot(net: nn.Module) -> tuple[dict[str, Tensor], dict[str, bool], list[int]]:
    state = {k: v.detach().clone() for k, v in net.state_dict(keep_vars=True).items()}
    modes = {n: m.training for n, m in net.named_modules()}
    return state, modes, [id(p) for p in net.parameters()]


def _run(crit, net, layers, batches) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    stats = crit.collect(net, batches, layers, ROWS) if crit.requires_data else {}
    return stats, crit.score(net, layers, stats)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(available_criteria()))
def test_criterion_contract(name: str, arch: str) -> None:
    net = _network(arch)
    layers = all_convs(net)
    crit = get_criterion(name)
    x, y = _data()
    whole = [(x[:2], y[:2]), (x[2:], y[2:])]
    state, modes, ids = _snapshot(net)

    stats, scores = _run(crit, net, layers, whole)

    assert set(scores) == set(layers)
    for layer, conv in layers.items():
        s = scores[layer]
        if crit.granularity == "filter":
            assert s.shape == (conv.out_channels,), layer
        elif crit.granularity == "kernel":
            assert s.shape == conv.weight.shape[:2], layer
        else:
            assert s.shape == conv.weight.shape, layer
        assert torch.isfinite(s).all(), layer
    after, after_modes, after_ids = _snapshot(net)
    assert after.keys() == state.keys()
    assert all(torch.equal(state[k], after[k]) for k in state), "weights/buffers changed"
    assert after_modes == modes and after_ids == ids
    assert all(p.grad is None for p in net.parameters())

    again_stats, again = _run(crit, net, layers, whole)
    for k in stats:
        assert torch.equal(stats[k], again_stats[k]), f"non-deterministic stat {k}"
    for k in scores:
        assert torch.equal(scores[k], again[k]), f"non-deterministic score {k}"

    if crit.requires_data:
        first, _ = _run(crit, net, layers, whole[:1])
        second, _ = _run(crit, net, layers, whole[1:])
        assert first.keys() == stats.keys() == second.keys()
        summed = {k: first[k] + second[k] for k in stats}
        for k in stats:
            if stats[k].dtype.is_floating_point:
                torch.testing.assert_close(summed[k], stats[k], rtol=1e-6, atol=1e-9)
            else:
                assert torch.equal(summed[k], stats[k]), k
        rescored = crit.score(net, layers, summed)
        for k in scores:
            torch.testing.assert_close(rescored[k], scores[k], rtol=1e-6, atol=1e-9)


def test_registry_and_settings() -> None:
    assert {"Magnitude", "L1Norm", "KernelMagnitude", "IntraKernel", "Taylor", "APoZ", "LRP",
            "OCAP", "Random", "BNScale"} <= set(available_criteria())  # fmt: skip
    assert get_criterion("ocap", negative_slope=0.1).settings() == {
        "name": "OCAP",
        "negative_slope": 0.1,
    }
    with pytest.raises(ConfigError, match="choose one of"):
        get_criterion("nope")


def test_l1norm_hand_set_weights() -> None:
    conv = nn.Conv2d(2, 3, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(24, dtype=torch.float32).view(3, 2, 2, 2) - 12)
    w = conv.weight.detach().view(3, 8)
    l1 = L1Norm().score(conv, {"c": conv}, {})["c"]
    assert torch.equal(l1, w.abs().sum(1))
    torch.testing.assert_close(L1Norm(p=2).score(conv, {"c": conv}, {})["c"], w.norm(dim=1))
    assert torch.equal(
        KernelMagnitude().score(conv, {"c": conv}, {})["c"], w.view(3, 2, 4).abs().sum(2)
    )


def test_weight_criteria_magnitude_vs_intra_kernel() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(
            torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[10.0, 20.0], [30.0, 40.0]]]])
        )
    layers = dict(net.named_children())
    mag = Magnitude().score(net, layers, {})
    assert set(mag) == {"0", "2"} and torch.equal(mag["0"], net[0].weight.abs())
    intra = IntraKernel().score(net, layers, {})
    assert set(intra) == {"0"}  # Linear weights have no kernels
    # both kernels lose their smallest weight first, not the whole small kernel
    torch.testing.assert_close(intra["0"][0], intra["0"][1])
    assert intra["0"].amax(dim=(2, 3)).eq(1).all()


def test_apoz_known_zero_fraction() -> None:
    net = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(inplace=True))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[1].bias.copy_(torch.tensor([-100.0, 100.0, 0.0]))  # always negative / always positive
    x = -torch.ones(2, 1, 4, 4)
    x[:, :, 0, :] = 1.0  # a quarter of the pixels positive -> channel 2 is 75% zeros
    crit = APoZ()
    stats = crit.collect(net, [(x, torch.zeros(2, dtype=torch.long))], {"0": net[0]}, [0])
    assert stats["0/elements"].tolist() == [32, 32, 32]
    assert stats["0/zeros"].tolist() == [32, 0, 24]
    torch.testing.assert_close(
        crit.score(net, {"0": net[0]}, stats)["0"],
        torch.tensor([0.0, 1.0, 0.25], dtype=torch.float64),
    )


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_taylor_matches_hand_computation() -> None:
    torch.manual_seed(1)
    net = _Tiny().eval()
    x, y = _data(6, 5)
    rows = [2, 4, 6, 8]
    site = net.bn(net.conv(x))
    logits = net.head(torch.relu(site).mean(dim=(2, 3)))
    loss = nn.functional.cross_entropy(logits[:, rows], y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, site)
    expected = (site * grad).sum(dim=(2, 3)).abs().mean(dim=0).double()

    crit = Taylor()
    stats = crit.collect(net, [(x[:4], y[:4]), (x[4:], y[4:])], {"conv": net.conv}, rows)
    assert stats["images"].item() == 6
    torch.testing.assert_close(crit.score(net, {"conv": net.conv}, stats)["conv"], expected)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("crit", [Taylor(), LRP()], ids=["Taylor", "LRP"])
def test_class_aware_criteria_use_target_rows(crit) -> None:
    net = _network("resnet18")
    layers = all_convs(net)
    x, y = _data(4)
    y = y % 2
    a = crit.score(net, layers, crit.collect(net, [(x, y)], layers, [3, 5]))
    b = crit.score(net, layers, crit.collect(net, [(x, y)], layers, [0, 1]))
    assert any(not torch.allclose(a[k], b[k]) for k in a)

    cut = copy.deepcopy(net)
    cut_head(cut, [3, 5])
    c = crit.score(
        cut, layers_cut := all_convs(cut), crit.collect(cut, [(x, y)], layers_cut, [0, 1])
    )
    for k in a:
        torch.testing.assert_close(a[k], c[k], rtol=1e-4, atol=1e-6)


def _ocap_net(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
    return conv


def test_ocap_union_rule_over_all_batches() -> None:
    conv = _ocap_net(4)
    strengths = torch.tensor(
        [
            [9.0, 1.0, 2.0, 3.0],  # channel 0 top here only
            [1.0, 2.0, 0.5, 3.0],
            [1.0, 9.0, 2.0, 3.0],  # channel 1 top here only (in the second batch)
        ]
    )
    x = strengths[:, :, None, None].expand(3, 4, 2, 2).contiguous()
    labels = torch.zeros(3, dtype=torch.long)
    crit = OCAP()
    stats = crit.collect(conv, [(x[:2], labels[:2]), (x[2:], labels[2:])], {"c": conv}, [0])
    assert stats["c/rank_counts"].sum().item() == 3 * 4
    score = crit.score(conv, {"c": conv}, stats)["c"]
    # top-1 per image: union {0, 1, 3} (channel 3 is top in image 1)
    keep = score >= OCAP.union_threshold(4, 0.25)
    assert keep.tolist() == [True, True, False, True]
    # top-2 per image: image0 {0,3}, image1 {3,1}, image2 {1,3} -> channel 2 never kept
    keep = score >= OCAP.union_threshold(4, 0.5)
    assert keep.tolist() == [True, True, False, True]
    assert (score >= OCAP.union_threshold(4, 1.0)).all()
    # one batch only would have missed channel 1 (the reference code's bug)
    first = crit.score(
        conv, {"c": conv}, crit.collect(conv, [(x[:2], labels[:2])], {"c": conv}, [0])
    )
    assert not bool(first["c"][1] >= OCAP.union_threshold(4, 0.25))


def test_ocap_tie_break_by_hits() -> None:
    conv = _ocap_net(3)
    strengths = torch.tensor([[5.0, 4.0, 1.0], [5.0, 4.0, 1.0], [4.0, 5.0, 1.0]])
    x = strengths[:, :, None, None].contiguous()
    crit = OCAP()
    score = crit.score(
        conv, {"c": conv}, crit.collect(conv, [(x, torch.zeros(3).long())], {"c": conv}, [0])
    )["c"]
    assert score[0] > score[1] > score[2]


class _PlainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def test_lrp_zplus_conserves_relevance() -> None:
    torch.manual_seed(3)
    net = _PlainNet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.zero_()  # biases would absorb relevance
    x, y = _data(4, 8)
    crit = LRP()
    assert crit.rule_set(net) == "zplus"
    layers = all_convs(net)
    scores = crit.score(net, layers, crit.collect(net, [(x, y)], layers, ROWS))
    with torch.no_grad():
        start = net(x)[torch.arange(4), torch.tensor(ROWS)[y]].sum().double()
    for name, s in scores.items():
        torch.testing.assert_close(s.sum(), start, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_large", "efficientnet_b0"])
def test_lrp_composite_restores_model(arch: str) -> None:
    net = _network(arch)
    crit = LRP()
    assert crit.rule_set(net) == "composite"
    state, modes, ids = _snapshot(net)
    biases = {n: m.bias is None for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    layers = all_convs(net)
    x, y = _data(2)
    crit.collect(net, [(x, y)], layers, ROWS)
    with pytest.raises(RuntimeError):  # a failing forward must also leave the model clean
        crit.collect(net, [(torch.zeros(2, 5, 8, 8), y)], layers, ROWS)
    after, after_modes, after_ids = _snapshot(net)
    assert all(torch.equal(state[k], after[k]) for k in state) and after.keys() == state.keys()
    assert after_modes == modes and after_ids == ids
    assert biases == {n: m.bias is None for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        assert "forward" not in vars(m) and not hasattr(m, "canonizer_sum")


@pytest.mark.parametrize("arch", ["resnet18", "plain", "mobilenet_v3_large"])
def test_lrp_fast_rules_equal_zennit_reference(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from zennit.rules import AlphaBeta, ZPlus

    from capl.criteria import lrp as lrp_module

    torch.manual_seed(3)
    net = _PlainNet() if arch == "plain" else copy.deepcopy(_network(arch))
    layers = all_convs(net)
    x, y = _data(4)
    fast = LRP().collect(net, [(x, y)], layers, ROWS)
    # zennit's own rules: AlphaBeta(1, 0) with its beta terms, two-term ZPlus
    monkeypatch.setattr(lrp_module, "_ZPlus", ZPlus)
    monkeypatch.setattr(
        lrp_module,
        "_alpha_beta",
        lambda alpha, beta, zero_params=None: AlphaBeta(alpha, beta, zero_params=zero_params),
    )
    reference = LRP().collect(net, [(x, y)], layers, ROWS)
    assert fast.keys() == reference.keys()
    for key in reference:
        assert torch.equal(fast[key], reference[key]), key
    assert any(bool(v.abs().sum() > 0) for k, v in fast.items() if k != "images")


def test_lrp_composite_relevance_mostly_conserved() -> None:
    net = copy.deepcopy(_network("resnet18")).eval()
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    x, y = _data(4)
    crit = LRP(init="one")
    layers = {"layer4.1.conv2": net.layer4[1].conv2}
    s = crit.score(net, layers, crit.collect(net, [(x, y)], layers, ROWS))["layer4.1.conv2"]
    # the residual Sum (epsilon) splits the 4 units of relevance between the block and its skip
    assert 0 < s.sum().item() < 4 + 1e-3


def test_activation_site_is_following_batchnorm() -> None:
    net = _network("resnet18").eval()
    x, _ = _data(2)
    layers = {"conv1": net.conv1, "layer1.0.conv2": net.layer1[0].conv2}
    with ActivationSites(net, layers) as rec, torch.no_grad():
        net(x)
        site = rec.sites["conv1"].clone()
    with torch.no_grad():
        expected = net.bn1(net.conv1(x))
    torch.testing.assert_close(site, expected)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    net.train()


@pytest.mark.parametrize("arch", ["resnet50", "vgg16_bn", "mobilenet_v3_large"])
def test_static_and_runtime_batchnorm_pairing_agree(arch: str) -> None:
    net = _network(arch)
    pairs = following_batchnorms(net)
    convs = all_convs(net)
    x, _ = _data(2)
    seen: dict[str, nn.Module] = {}
    hooks = [
        bn.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, o))
        for n, bn in net.named_modules()
        if isinstance(bn, nn.BatchNorm2d)
    ]
    try:
        with ActivationSites(net, convs) as rec, torch.no_grad(), torch.random.fork_rng():
            net.eval()
            net(x)
            bn_outputs = {id(o) for o in seen.values()}
            runtime = {n for n, s in rec.sites.items() if id(s) in bn_outputs}
    finally:
        for h in hooks:
            h.remove()
        net.train()
    assert runtime == set(pairs)


def _norms(name: str, site: Tensor) -> Tensor:
    return site.flatten(2).norm(dim=2)


@pytest.mark.parametrize("arch", ["resnet18", "vgg16", "mobilenet_v3_large", "efficientnet_b0"])
def test_reduce_in_hooks_equals_recorded_sites(arch: str) -> None:
    net = _network(arch).eval()
    convs = all_convs(net)
    x, _ = _data(3)
    with ActivationSites(net, convs) as rec, torch.inference_mode():
        net(x)
        expected = {n: _norms(n, site) for n, site in rec.sites.items()}
    outputs: dict[str, Tensor] = {}
    bn_inputs: dict[int, Tensor] = {}
    hooks = [c.register_forward_hook(lambda m, i, o, n=n: outputs.setdefault(n, o))
             for n, c in convs.items()]  # fmt: skip
    hooks += [bn.register_forward_pre_hook(lambda m, i: bn_inputs.setdefault(id(m), i[0]))
              for bn in net.modules() if isinstance(bn, nn.BatchNorm2d)]  # fmt: skip
    try:
        with ActivationSites(net, convs, reduce=_norms) as rec, torch.inference_mode():
            rec.run(x)  # first run learns the wiring on one image
            outputs.clear()
            bn_inputs.clear()
            got = rec.run(x)
            assert not rec._recording_only and not rec._keep
            wiring = dict(rec._wiring or {})
    finally:
        for h in hooks:
            h.remove()
        net.train()
    assert got.keys() == expected.keys() == set(convs)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    # nothing was cloned: each BatchNorm read its conv's own output tensor
    assert bool(wiring) == any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    for name, bn in wiring.items():
        assert bn_inputs[bn] is outputs[name], name


class _BatchDependent(nn.Module):
    """conv -> BN for a single image, the bare conv output otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) if x.shape[0] == 1 else torch.relu_(y)


def test_reduce_falls_back_to_recording_when_the_wiring_changes() -> None:
    torch.manual_seed(0)
    net = _BatchDependent().eval()
    with torch.no_grad():
        net.bn.bias.fill_(5.0)  # the BN output differs clearly from the conv output
    x, _ = _data(2)
    with ActivationSites(net, {"conv": net.conv}, reduce=_norms) as rec, torch.inference_mode():
        got = rec.run(x)
        assert rec._recording_only
        again = rec.run(x)
    with torch.inference_mode():
        expected = net.conv(x).flatten(2).norm(dim=2)  # the site before the in-place ReLU
    assert torch.equal(got["conv"], expected) and torch.equal(again["conv"], expected)


def test_random_seeded_and_independent_of_global_rng() -> None:
    net = _network("vgg16")
    layers = all_convs(net)
    torch.manual_seed(123)
    a = Random(seed=1).score(net, layers, {})
    torch.manual_seed(456)
    b = Random(seed=1).score(net, layers, {})
    c = Random(seed=2).score(net, layers, {})
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a)
    sub = Random(seed=1).score(net, {"features.0": layers["features.0"]}, {})
    assert torch.equal(sub["features.0"], a["features.0"])


def test_bnscale_gamma_and_fallback() -> None:
    net = _network("resnet18")
    crit = BNScale()
    scores = crit.score(net, all_convs(net), {})
    assert torch.equal(scores["conv1"], net.bn1.weight.detach().abs())
    assert torch.equal(
        scores["layer2.0.downsample.0"], net.layer2[0].downsample[1].weight.detach().abs()
    )
    assert crit.fallback_layers == []
    vgg = _network("vgg16")
    scores = crit.score(vgg, all_convs(vgg), {})
    assert crit.fallback_layers == list(all_convs(vgg))
    assert torch.equal(scores["features.0"], L1Norm().score(vgg, all_convs(vgg), {})["features.0"])
    # mixed network: SE convs' L1 norms, rescaled to the mean |gamma|, same order within a layer
    mnv3 = _network("mobilenet_v3_large")
    scores = crit.score(mnv3, all_convs(mnv3), {})
    fc1 = "features.4.block.2.fc1"
    assert fc1 in crit.fallback_layers and len(crit.fallback_layers) == 16
    gammas = torch.cat(
        [m.weight.detach().abs() for m in mnv3.modules() if isinstance(m, nn.BatchNorm2d)]
    )
    assert float(scores[fc1].mean()) == pytest.approx(float(gammas.mean()), rel=1e-5)
    l1 = L1Norm().score(mnv3, all_convs(mnv3), {})[fc1]
    assert torch.equal(torch.argsort(scores[fc1], stable=True), torch.argsort(l1, stable=True))


@pytest.mark.parametrize("arch", ["mobilenet_v3_large", "efficientnet_b0"])
def test_lrp_se_nets_conserve_at_the_top(arch: str) -> None:
    torch.manual_seed(0)
    net = build_network(arch, 10, small_input=True)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: realistic statistics, activations of O(1)
    with torch.no_grad():
        net(torch.randn(16, 3, 8, 8))
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.3)
            nn.init.zeros_(m.bias)
    layers = all_convs(net)
    x, y = _data(4)
    crit = LRP(init="one")
    scores = crit.score(net, layers, crit.collect(net, [(x, y)], layers, ROWS))
    last = list(layers)[-1]  # the 1x1 conv before global pooling: only epsilon rules above it
    torch.testing.assert_close(scores[last].sum().item(), 4.0, rtol=1e-3, atol=1e-3)
    se = [n for n in layers if n.endswith(".fc2")]
    assert se and any(scores[n].abs().sum() > 0 for n in se)  # the gate path gets relevance
