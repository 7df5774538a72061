"""capl.pruning: exact structured removal, budgets, plans, masks, heads, errors."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
import torch_pruning as tp
from torch import Tensor, nn

from capl.criteria import BNScale, available_criteria
from capl.criteria import base as criteria_base
from capl.criteria.base import Criterion
from capl.errors import ConfigError
from capl.models import build_network, find_classifier
from capl.pruning import (
    PruningConfig,
    PruningPlan,
    apply_plan,
    auto_round_to,
    conv_linear_macs,
    make_masks_permanent,
    make_plan,
    plan_mask,
    prunable_layers,
    pruning_report,
)
from capl.pruning.structure import analyse
from tests.conftest import randomise_batchnorm

ARCHS = ["resnet18", "resnet50", "vgg16", "vgg16_bn", "mobilenet_v3_large", "efficientnet_b0"]
SIZE = 16
CLASSES = 10


class _TestL1(Criterion):
    """Filter L1 norm, for when the real criteria are absent."""

    granularity = "filter"
    normalization = "l2"

    def score(self, model, layers, stats):
        return {
            n: m.weight.detach().abs().flatten(1).sum(1)
            for n, m in layers.items()
            if isinstance(m, nn.Conv2d)
        }


class _TestRandomScores(Criterion):
    """Seeded random scores of any granularity: stands in for data-driven criteria."""

    def __init__(self, granularity: str = "filter", normalization: str = "none", seed: int = 0):
        self.granularity = granularity
        self.normalization = normalization
        self.seed = seed

    def score(self, model, layers, stats):
        gen = torch.Generator().manual_seed(self.seed)
        out = {}
        for name, m in layers.items():
            shape = {
                "filter": m.weight.shape[:1],
                "kernel": m.weight.shape[:2],
                "weight": m.weight.shape,
            }[self.granularity]
            out[name] = torch.rand(shape, generator=gen)
        return out


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny inputs: intra-op threads only add synchronisation, which on a shared 2-core machine
    # slows these forwards down by two orders of magnitude
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _TestTiedScores(Criterion):
    """Every channel scores the same (an untrained network's BatchNorm scales)."""

    granularity = "filter"

    def score(self, model, layers, stats):
        return {
            n: torch.ones(m.out_channels) for n, m in layers.items() if isinstance(m, nn.Conv2d)
        }


# test-only criteria must not show up in other test files' registry-wide contract tests
for _cls in (_TestL1, _TestRandomScores, _TestTiedScores):
    criteria_base._REGISTRY.pop(_cls.__name__, None)


def _real(granularity: str) -> list[type[Criterion]]:
    return [c for c in available_criteria().values() if c.granularity == granularity]


def _structured() -> list[type[Criterion]]:
    return _real("filter") or [_TestL1]


@functools.cache
def _base(arch: str) -> nn.Module:
    torch.manual_seed(0)
    net = build_network(arch, CLASSES, small_input=True)
    randomise_batchnorm(net)
    return net.eval()


def _net(arch: str) -> nn.Module:
    return copy.deepcopy(_base(arch))


def _x(batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def _scores(criterion: Criterion, model: nn.Module) -> dict[str, Tensor]:
    layers = prunable_layers(model, criterion.granularity)
    stats = {}
    if criterion.requires_data:
        batch = (_x(4), torch.tensor([0, 1, 0, 1]))
        stats = criterion.collect(model, [batch], layers, [3, 5])
    return criterion.score(model, layers, stats)


def _plan(arch: str, criterion: Criterion | None = None, **config) -> tuple[nn.Module, PruningPlan]:
    # exact per-group counts unless a test asks for rounding (the default, auto, rounds)
    config.setdefault("round_to", None)
    model = _net(arch)
    criterion = criterion or _TestL1()
    plan = make_plan(model, criterion, _scores(criterion, model), PruningConfig(**config), _x())
    return model, plan


def _zeroed_reference(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """The unpruned network with every coupled copy of the removed channels zeroed.

    Output channels of convs (weights and bias) and BNs (gamma and beta) in each dependency
    group are set to zero, so the channel is exactly zero wherever it flows (residual adds,
    depthwise convs, squeeze-excitation products); its consumers then add nothing for it.
    """
    ref = copy.deepcopy(model).eval()
    graph = tp.DependencyGraph().build_dependency(ref, _x()[:1], verbose=False)
    with torch.no_grad():
        for key, idxs in plan.removed:
            module = ref.get_submodule(key)
            fn = graph.get_pruner_of_module(module).prune_out_channels
            for item in graph.get_pruning_group(module, fn, idxs).items:
                target = item.dep.target.module
                if not graph.is_out_channel_pruning_fn(item.dep.handler):
                    continue
                if isinstance(target, (nn.Conv2d, nn.BatchNorm2d)):
                    index = torch.as_tensor(item.idxs)
                    target.weight[index] = 0
                    if target.bias is not None:
                        target.bias[index] = 0
    return ref


def _assert_equivalent(model: nn.Module, plan: PruningPlan) -> None:
    pruned = apply_plan(copy.deepcopy(model), plan)
    reference = _zeroed_reference(model, plan)
    x = _x()
    with torch.no_grad():
        expected, got = reference(x), pruned.eval()(x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-4 * scale + 1e-6, rtol=1e-4)
    # the removal is physical: fewer parameters, each key conv narrower by its removed count
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    for key, idxs in plan.removed:
        before, after = model.get_submodule(key), pruned.get_submodule(key)
        assert after.out_channels == before.out_channels - len(idxs)
        assert after.weight.shape[0] == after.out_channels


# ---------------------------------------------------------------------------------------------
# exactness


def _structured_names() -> list[str]:
    return [c.__name__ for c in _real("filter")] or ["_TestL1"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", _structured_names())
def test_physical_removal_equals_zeroed_channels(arch: str, name: str) -> None:
    """Real scores (data-driven criteria from one tiny batch), layer scope."""
    criterion = available_criteria()[name]() if name in available_criteria() else _TestL1()
    model, plan = _plan(arch, criterion, ratio=0.4)
    assert plan.removed, f"{name} removed nothing on {arch}"
    _assert_equivalent(model, plan)


@pytest.mark.parametrize("arch", ARCHS)
def test_global_removal_is_exact_and_cost_model_matches(arch: str) -> None:
    model, plan = _plan(arch, _TestRandomScores(), ratio=0.5, scope="global")
    _assert_equivalent(model, plan)
    # the cost model the target search uses is exact (real counts on the pruned network)
    selection = plan.report["selection"]
    assert selection["estimated_macs_removed_fraction"] == pytest.approx(
        plan.report["macs_removed_fraction"], abs=1e-12
    )
    assert selection["estimated_params_removed_fraction"] == pytest.approx(
        plan.report["params_removed_fraction"], abs=1e-12
    )


def test_residual_groups_prune_block_outputs_and_downsample() -> None:
    model, plan = _plan("resnet18", ratio=0.5)
    assert "conv1" in {k for k, _ in plan.removed}
    pruned = apply_plan(copy.deepcopy(model), plan)
    for name in ("layer1.1.conv2", "layer2.0.downsample.0", "layer4.1.conv2"):
        assert pruned.get_submodule(name).out_channels < model.get_submodule(name).out_channels


# ---------------------------------------------------------------------------------------------
# budgets and constraints


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_large", "efficientnet_b0"])
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_layer_scope_realises_the_ratio(arch: str, ratio: float) -> None:
    _, plan = _plan(arch, ratio=ratio)
    realised = plan.report["channels_removed_fraction"]
    assert realised == pytest.approx(ratio, abs=0.03)
    for key, idxs in plan.removed:
        channels = plan.report["layers"][key]["channels_before"]
        assert len(idxs) == max(0, min(channels - 1, int(ratio * channels + 0.5)))


def test_global_scope_ranks_across_layers() -> None:
    _, plan = _plan("resnet18", _TestRandomScores(), ratio=0.5, scope="global")
    assert plan.report["channels_removed_fraction"] == pytest.approx(0.5, abs=0.02)
    layers = plan.report["layers"]
    fractions = {len(idxs) / layers[k]["channels_before"] for k, idxs in plan.removed}
    assert len(fractions) > 1  # not a uniform per-layer cut


def test_global_ties_cut_every_group_by_the_same_fraction() -> None:
    model, plan = _plan("resnet18", _TestTiedScores(), ratio=0.5, scope="global")
    structure = analyse(model, _x())
    removed = dict(plan.removed)
    fractions = [len(removed.get(g.key, [])) / g.channels for g in structure.groups]
    # half of every group, to one channel, not the first groups in forward order emptied
    assert min(fractions) == pytest.approx(0.5, abs=1 / 64) and max(fractions) <= 0.5 + 1 / 64
    # and the order within a tied group is still the lowest channel first
    assert all(idxs == list(range(len(idxs))) for _, idxs in plan.removed)


def test_round_to_keeps_multiples() -> None:
    for arch in ("resnet18", "efficientnet_b0"):
        model, plan = _plan(arch, ratio=0.3, round_to=8)
        assert plan.removed
        for key, idxs in plan.removed:
            kept = model.get_submodule(key).out_channels - len(idxs)
            assert kept % 8 == 0, (arch, key, kept)


def test_round_to_auto_is_the_default_and_explicit_values_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert PruningConfig(0.5).round_to == "auto"
    assert auto_round_to("cpu", cpu_capability="AVX2") == 8
    assert auto_round_to("cpu", cpu_capability="DEFAULT") == 8
    assert auto_round_to("cpu", cpu_capability="AVX512") == 16
    assert auto_round_to("cuda", torch.float32) == auto_round_to("cuda", torch.float16) == 8
    assert auto_round_to("cuda", torch.int8) == 16
    assert auto_round_to("cuda", torch.int8, cpu_capability="AVX2") == 16  # CPU's is not read
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert auto_round_to("cpu") == 8
    model, plan = _plan("resnet18", ratio=0.3, round_to="auto")
    assert plan.report["selection"]["round_to"] == 8
    assert plan.removed
    for key, idxs in plan.removed:
        kept = model.get_submodule(key).out_channels - len(idxs)
        assert kept % 8 == 0, (key, kept)
    # the plan keeps the setting as given; the multiple it resolved to is in the report
    assert PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict()))).config.round_to == "auto"
    model, plan4 = _plan("resnet18", ratio=0.3, round_to=4)
    kept4 = [model.get_submodule(k).out_channels - len(i) for k, i in plan4.removed]
    assert all(k % 4 == 0 for k in kept4) and any(k % 8 for k in kept4)
    assert plan4.report["selection"]["round_to"] == 4
    _, exact = _plan("resnet18", ratio=0.3, round_to=None)
    assert exact.report["selection"]["round_to"] is None
    assert any((64 - len(i)) % 8 for k, i in exact.removed if k == "conv1")


def test_round_to_auto_on_avx512_keeps_mobilenet_widths_whole_blocks_of_16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # AVX-512 kernels (ONNX Runtime's NCHWc, oneDNN) block channels by 16: a width of 8 mod 16
    # is padded, and the 16-channel stem pruned to 8 leaves the blocked layout for reorders
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    model, plan = _plan("mobilenet_v3_large", ratio=0.5, target="macs", round_to="auto")
    assert plan.report["selection"]["round_to"] == 16
    assert plan.report["macs_removed_fraction"] == pytest.approx(0.5, abs=0.02)
    pruned = apply_plan(copy.deepcopy(model), plan)
    base_widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    kept = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    changed = {n: w for n, w in kept.items() if w != base_widths[n]}
    assert changed and all(w % 16 == 0 for w in changed.values()), changed
    # the stem group (stem conv, first block's depthwise and projection) stays 16 wide
    for name in ("features.0.0", "features.1.block.0.0", "features.1.block.1.0"):
        assert kept[name] == base_widths[name] == 16
    # squeeze-excitation squeeze widths and depthwise convs follow the same multiple
    assert kept["features.5.block.2.fc1"] % 16 == 0 and kept["features.5.block.1.0"] % 16 == 0
    _, explicit = _plan("mobilenet_v3_large", ratio=0.5, target="macs", round_to=16)
    assert explicit.removed == plan.removed
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    _, avx2 = _plan("mobilenet_v3_large", ratio=0.5, target="macs", round_to="auto")
    assert avx2.report["selection"]["round_to"] == 8


def test_masks_ignore_round_to_auto(caplog: pytest.LogCaptureFixture) -> None:
    criterion = _TestRandomScores("weight")
    with caplog.at_level("WARNING", logger="capl.pruning.plan"):
        _, auto = _plan("resnet18", criterion, ratio=0.5, round_to="auto")
    assert "round_to" not in caplog.text  # the default is not a request to round
    _, exact = _plan("resnet18", criterion, ratio=0.5, round_to=None)
    assert auto.masks == exact.masks and auto.report["selection"]["round_to"] is None
    with caplog.at_level("WARNING", logger="capl.pruning.plan"):
        _plan("resnet18", criterion, ratio=0.5, round_to=8)
    assert "round_to=8 ignored" in caplog.text


def test_layer_macs_target_with_round_to_meets_the_budget() -> None:
    # torchvision's ImageNet stem: the closest step of the layer-scope search falls 1.5% short
    # of the goal; the plan must take the step that meets it rather than call it unreachable
    torch.manual_seed(0)
    model = build_network("resnet18", CLASSES).eval()
    criterion = available_criteria().get("L1Norm", _TestL1)()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    config = PruningConfig(ratio=0.5, scope="layer", round_to=8, target="macs")
    plan = make_plan(model, criterion, _scores(criterion, model), config, x)
    assert 0.5 <= plan.report["macs_removed_fraction"] < 0.6
    pruned = apply_plan(copy.deepcopy(model), plan)
    kept = [pruned.get_submodule(k).out_channels for k, _ in plan.removed]
    assert kept and all(k % 8 == 0 for k in kept)
    assert pruned(x).shape == (1, CLASSES)


def test_skip_first_and_ignore() -> None:
    _, plan = _plan("resnet18", ratio=0.5, skip_first=1, ignore=["layer4.*"])
    layers = plan.report["layers"]
    assert layers["conv1"]["channels_after"] == layers["conv1"]["channels_before"]
    # conv1 is coupled with layer1's block outputs through the residual adds
    assert layers["layer1.0.conv2"]["channels_after"] == layers["layer1.0.conv2"]["channels_before"]
    for name, entry in layers.items():
        if name.startswith("layer4."):
            assert entry["channels_after"] == entry["channels_before"], name
    assert layers["layer2.0.conv1"]["channels_after"] < layers["layer2.0.conv1"]["channels_before"]
    _, plan2 = _plan("mobilenet_v3_large", ratio=0.5, skip_first=1)
    first = plan2.report["layers"]["features.0.0"]
    assert first["channels_after"] == first["channels_before"]


def test_classifier_outputs_are_never_pruned() -> None:
    model, plan = _plan("vgg16", ratio=0.5, scope="global")
    name, _ = find_classifier(model)
    assert plan.report["layers"][name]["channels_after"] == CLASSES


def test_target_macs_reaches_budget() -> None:
    _, plan = _plan("resnet18", ratio=0.5, target="macs")
    assert plan.report["macs_removed_fraction"] == pytest.approx(0.5, abs=0.02)
    _, plan = _plan("mobilenet_v3_large", _TestRandomScores(), ratio=0.4, target="params",
                    scope="global")  # fmt: skip
    assert plan.report["params_removed_fraction"] == pytest.approx(0.4, abs=0.02)


def test_target_counts_the_class_subset_head() -> None:
    model = _net("resnet18")
    criterion = _TestL1()
    config = PruningConfig(ratio=0.3, target="params")
    plan = make_plan(model, criterion, _scores(criterion, model), config, _x(), head_rows=[1, 2])
    assert plan.report["params_removed_fraction"] == pytest.approx(0.3, abs=0.02)


# ---------------------------------------------------------------------------------------------
# plans: serialisation, replay, determinism


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_large"])
def test_plan_json_round_trip_replays_on_fresh_model(arch: str) -> None:
    torch.manual_seed(7)
    model = build_network(arch, CLASSES, small_input=True).eval()
    state = copy.deepcopy(model.state_dict())
    criterion = _TestRandomScores(seed=3)
    config = PruningConfig(ratio=0.4, scope="global", round_to=4)
    plan = make_plan(model, criterion, _scores(criterion, model), config, _x(), head_rows=[2, 0])
    text = json.dumps(plan.to_dict())
    pruned = apply_plan(model, plan).eval()

    torch.manual_seed(99)
    fresh = build_network(arch, CLASSES, small_input=True)
    fresh.load_state_dict(state)
    replayed = apply_plan(fresh, PruningPlan.from_dict(json.loads(text))).eval()
    shapes = {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in replayed.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(replayed(_x()), pruned(_x()), rtol=0, atol=0)
    assert PruningPlan.from_dict(json.loads(text)).to_dict() == json.loads(text)


def test_same_inputs_same_plan() -> None:
    for criterion in (_TestL1(), _TestRandomScores(granularity="weight")):
        plans = []
        for _ in range(2):
            model = _net("mobilenet_v3_large")
            config = PruningConfig(ratio=0.5, scope="global", target="macs")
            plans.append(make_plan(model, criterion, _scores(criterion, model), config, _x()))
        assert json.dumps(plans[0].to_dict()) == json.dumps(plans[1].to_dict())


def test_plan_runs_on_one_thread_and_restores_the_setting() -> None:
    model, criterion = _net("resnet18"), _TestL1()
    scores, config = _scores(criterion, model), PruningConfig(0.4, scope="global", target="macs")
    seen: list[int] = []
    handle = model.conv1.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    try:
        plan = make_plan(model, criterion, scores, config, _x())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
        handle.remove()
    assert seen and set(seen) == {1}
    assert plan.to_dict() == make_plan(model, criterion, scores, config, _x()).to_dict()


def test_scores_reused_across_ratios() -> None:
    model = _net("vgg16_bn")
    criterion = _TestL1()
    scores = _scores(criterion, model)
    removed = []
    for ratio in (0.1, 0.3, 0.6):
        plan = make_plan(model, criterion, scores, PruningConfig(ratio=ratio), _x())
        removed.append(plan.report["channels_removed_fraction"])
    assert removed == sorted(removed) and removed[0] < removed[-1]


# ---------------------------------------------------------------------------------------------
# masks


def _mask_criteria() -> list[Criterion]:
    """One data-free criterion per mask granularity (real ones when registered)."""
    found = []
    for granularity in ("weight", "kernel"):
        real = [c for c in _real(granularity) if not c.requires_data]
        found.append(real[0]() if real else _TestRandomScores(granularity=granularity))
    return found


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_masks_realise_ratio_and_survive_training(scope: str) -> None:
    for criterion in _mask_criteria():
        model = _net("resnet18")
        scores = _scores(criterion, model)
        plan = make_plan(model, criterion, scores, PruningConfig(ratio=0.5, scope=scope), _x())
        assert plan.masks and not plan.removed
        kept = sum(int(plan_mask(plan, n).sum()) for n in plan.masks)
        units = sum(plan_mask(plan, n).numel() for n in plan.masks)
        assert (units - kept) / units == pytest.approx(0.5, abs=len(plan.masks) / units + 1e-9)
        if scope == "layer":
            for name in plan.masks:
                mask = plan_mask(plan, name)
                assert mask.numel() - int(mask.sum()) == int(0.5 * mask.numel() + 0.5)

        model.train()
        apply_plan(model, plan)
        zeros = {n: m.weight == 0 for n, m in model.named_modules() if hasattr(m, "weight_mask")}
        assert set(zeros) == set(plan.masks)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            model(_x()).square().mean().backward()
            opt.step()
        for name, was_zero in zeros.items():
            assert (model.get_submodule(name).weight[was_zero] == 0).all()
        make_masks_permanent(model)
        for name, was_zero in zeros.items():
            module = model.get_submodule(name)
            assert not hasattr(module, "weight_mask") and isinstance(module.weight, nn.Parameter)
            assert (module.weight[was_zero] == 0).all()


def test_mask_target_macs_counts_nonzero_work() -> None:
    model = _net("resnet18")
    criterion = _TestRandomScores(granularity="kernel")
    config = PruningConfig(ratio=0.5, target="macs", scope="global")
    plan = make_plan(model, criterion, _scores(criterion, model), config, _x())
    assert plan.report["nonzero_macs_removed_fraction"] == pytest.approx(0.5, abs=0.01)
    assert plan.report["macs_removed_fraction"] == 0.0


def test_mask_report_counts_the_masked_zeros() -> None:
    # totals come from the effective (orig * mask) weights, counted independently here
    model = _net("resnet18")
    criterion = _TestRandomScores(granularity="weight")
    plan = make_plan(model, criterion, _scores(criterion, model), PruningConfig(ratio=0.5), _x())
    masked = apply_plan(copy.deepcopy(model), plan)
    report = pruning_report(model, masked, _x())
    dense = sum(p.numel() for p in model.parameters())
    zeros = sum(int((p == 0).sum()) for p in model.parameters())
    cut = sum(int((~plan_mask(plan, n)).sum()) for n in plan.masks)
    assert cut > 0
    assert report["params_before"] == report["params_after"] == dense
    assert report["nonzero_params_before"] == dense - zeros
    assert report["nonzero_params_after"] == dense - zeros - cut
    assert report["weights_before"] - report["weights_after"] == cut
    for name in plan.masks:
        layer = report["layers"][name]
        assert layer["weights_before"] - layer["weights_after"] == int(
            (~plan_mask(plan, name)).sum()
        )
    # make_masks_permanent keeps the zeros and drops every mask
    make_masks_permanent(masked)
    assert not any(hasattr(m, "weight_mask") for m in masked.modules())
    assert pruning_report(model, masked, _x())["nonzero_params_after"] == dense - zeros - cut


# ---------------------------------------------------------------------------------------------
# class-subset head


def test_head_rows_keep_the_original_logits() -> None:
    model = _net("resnet18")
    criterion = _TestL1()
    scores = _scores(criterion, model)
    plan = make_plan(model, criterion, scores, PruningConfig(ratio=0.0), _x(), head_rows=[3, 5])
    cut = apply_plan(copy.deepcopy(model), plan)
    with torch.no_grad():
        torch.testing.assert_close(cut(_x()), model(_x())[:, [3, 5]])
    config = PruningConfig(ratio=0.5)
    pruned_plan = make_plan(model, criterion, scores, config, _x())
    both_plan = make_plan(model, criterion, scores, config, _x(), head_rows=[3, 5])
    pruned = apply_plan(copy.deepcopy(model), pruned_plan)
    both = apply_plan(copy.deepcopy(model), both_plan)
    with torch.no_grad():
        torch.testing.assert_close(both(_x()), pruned(_x())[:, [3, 5]])


# ---------------------------------------------------------------------------------------------
# reports


def test_report_counts_match_benchmark() -> None:
    torch.manual_seed(0)
    net = build_network("resnet18", 1000).eval()
    macs = sum(v["macs"] for v in conv_linear_macs(net, torch.zeros(1, 3, 224, 224)).values())
    assert macs == pytest.approx(1.814e9, rel=1e-3)
    counting = pytest.importorskip("capl.benchmark.counting")
    model, plan = _plan("mobilenet_v3_large", ratio=0.5)
    pruned = apply_plan(copy.deepcopy(model), plan)
    report = pruning_report(model, pruned, _x())
    assert report["macs_after"] == counting.count_conv_linear_macs(pruned, (3, SIZE, SIZE))
    assert report["params_after"] == counting.count_params(pruned)
    assert report == {k: v for k, v in plan.report.items() if k != "selection"}
    # make_plan counts without forwards (the traced shapes); a cut head is read off the module
    model, criterion = _net("resnet18"), _TestL1()
    config = PruningConfig(0.4, scope="global", round_to=None)
    plan = make_plan(model, criterion, _scores(criterion, model), config, _x(), head_rows=[2, 7])
    pruned = apply_plan(copy.deepcopy(model), plan)
    assert pruning_report(model, pruned, _x()) == {
        k: v for k, v in plan.report.items() if k != "selection"
    }
    assert plan.report["layers"]["fc"]["channels_after"] == 2


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": 0.5, "scope": "net"}, "scope"),
        ({"ratio": 0.5, "target": "flops"}, "target"),
        ({"ratio": 0.5, "skip_first": -1}, "skip_first"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
        ({"ratio": 0.5, "round_to": "eight"}, "round_to must be auto, null or an integer"),
        ({"ratio": 0.5, "min_channels": -1}, "min_channels"),
        ({"ratio": 0.5, "ignore": "layer1.*"}, "ignore"),
    ],
)
def test_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PruningConfig(**kwargs)


def test_plan_errors() -> None:
    model = _net("resnet18")
    criterion = _TestL1()
    scores = _scores(criterion, model)
    x = _x()
    with pytest.raises(ConfigError, match="layer9"):
        make_plan(model, criterion, scores, PruningConfig(0.5, ignore=["layer9.*"]), x)
    with pytest.raises(ConfigError, match="head rows"):
        make_plan(model, criterion, scores, PruningConfig(0.5), x, head_rows=[3, 10])
    with pytest.raises(ConfigError, match="every unit"):
        make_plan(model, criterion, scores, PruningConfig(0.999, min_channels=0, round_to=None), x)
    # the message names the limits: round_to's width steps only where they apply
    for round_to, limits in ((32, "with widths in multiples of 32 (round_to: 32), min_channels"),
                             (None, "removed with min_channels=1 and")):  # fmt: skip
        config = PruningConfig(
            0.5, target="params", ignore=["layer3.*", "layer4.*"], round_to=round_to
        )
        with pytest.raises(ConfigError, match="unreachable") as info:
            make_plan(model, criterion, scores, config, x)
        assert limits in str(info.value)
        assert str(info.value).endswith("lower the ratio or round_to" if round_to else "ratio")
    with pytest.raises(ConfigError, match="expected"):
        make_plan(model, criterion, {"conv1": torch.ones(3)}, PruningConfig(0.5), x)
    masks = _TestRandomScores(granularity="weight")
    with pytest.raises(ConfigError, match="every unit"):
        make_plan(model, masks, _scores(masks, model), PruningConfig(0.9999, min_channels=0), x)
    plan = make_plan(model, criterion, scores, PruningConfig(0.5), x)
    with pytest.raises(ConfigError, match="does not match"):
        apply_plan(build_network("resnet18", 5, small_input=True), plan)
    with pytest.raises(ConfigError, match="version"):
        PruningPlan.from_dict({**plan.to_dict(), "version": 0})


# ---------------------------------------------------------------------------------------------
# contract with every registered criterion


@pytest.mark.parametrize("name", sorted(available_criteria()))
def test_every_criterion_plans_and_applies(name: str) -> None:
    """Every registered criterion, real scores (data-driven ones from one tiny batch)."""
    cls = available_criteria()[name]
    model, plan = _plan("mobilenet_v3_large", cls(), ratio=0.3, scope="global")
    assert plan.criterion["name"] == name and plan.granularity == cls.granularity
    assert json.loads(json.dumps(plan.to_dict())) == plan.to_dict()
    replay = PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    if cls.granularity == "filter":
        assert plan.report["channels_removed_fraction"] > 0.1
        _assert_equivalent(model, replay)
    else:
        assert plan.report["weights_removed_fraction"] > 0.1
        pruned = apply_plan(copy.deepcopy(model), replay)
        with torch.no_grad():
            assert pruned.eval()(_x()).shape == (2, CLASSES)


# ---------------------------------------------------------------------------------------------
# per-layer ratios (layer_ratios)


def _expected_removed(groups, layer_ratios: dict[str, float], ratio: float) -> dict[str, int]:
    """Channels each group should lose: first matching pattern's ratio, else ``ratio``."""
    import fnmatch

    out = {}
    for g in groups:
        q = next((r for p, r in layer_ratios.items() if fnmatch.fnmatch(g.key, p)), ratio)
        out[g.key] = min(g.channels - 1, int(q * g.channels + 0.5))
    return out


@pytest.mark.parametrize(
    ("arch", "layer_ratios", "ratio", "size"),
    [
        (
            "resnet20",
            {"conv1": 0.25, "layer3.0.conv1": 0.75, "layer3.*": 0.5, "layer2.1.conv1": 0.0},
            0.1,
            8,
        ),
        ("vgg16_bn", {"features.0": 0.5, "features.1?": 0.75, "features.3*": 0.25}, 0.0, SIZE),
    ],
)
def test_layer_ratios_give_per_group_counts(
    arch: str, layer_ratios: dict[str, float], ratio: float, size: int
) -> None:
    from capl.pruning.structure import analyse

    torch.manual_seed(0)
    model = build_network(arch, CLASSES, small_input=True).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    criterion = _TestL1()
    config = PruningConfig(ratio=ratio, layer_ratios=layer_ratios, round_to=None)
    plan = make_plan(model, criterion, _scores(criterion, model), config, x)
    groups = analyse(model, x).groups
    expected = _expected_removed(groups, layer_ratios, ratio)
    removed = {g.key: 0 for g in groups} | {k: len(idxs) for k, idxs in plan.removed}
    assert removed == expected
    assert len(set(expected.values())) > 2  # really per layer
    pruned = apply_plan(copy.deepcopy(model), plan)
    for g in groups:
        for name, _, _ in g.convs:
            after = pruned.get_submodule(name).out_channels
            assert after == g.channels - expected[g.key], name
    with torch.no_grad():
        assert pruned.eval()(x).shape == (2, CLASSES)


def test_layer_ratios_first_pattern_wins_and_ignore_wins() -> None:
    config = PruningConfig(0.2, layer_ratios={"layer3.0.conv1": 0.75, "layer3.*": 0.5})
    assert config.ratio_for("layer3.0.conv1") == 0.75
    assert config.ratio_for("layer3.1.conv1") == 0.5
    assert config.ratio_for("conv1") == 0.2
    model = build_network("resnet20", CLASSES).eval()
    x = torch.randn(1, 3, 8, 8)
    criterion = _TestL1()
    config = PruningConfig(0.0, layer_ratios={"layer3.*": 0.5}, ignore=["layer3.0.*"])
    plan = make_plan(model, criterion, _scores(criterion, model), config, x)
    keys = {k for k, _ in plan.removed}
    assert "layer3.1.conv1" in keys and not any(k.startswith("layer3.0.") for k in keys)
    assert not any(k.startswith(("layer1", "layer2")) for k in keys)


def test_layer_ratios_for_masks() -> None:
    model = build_network("resnet20", CLASSES).eval()
    x = torch.randn(1, 3, 8, 8)
    for granularity in ("kernel", "weight"):
        criterion = _TestRandomScores(granularity=granularity)
        config = PruningConfig(0.0, layer_ratios={"layer1.0.conv1": 0.5, "layer2.*": 0.25})
        plan = make_plan(model, criterion, _scores(criterion, model), config, x)
        for name in prunable_layers(model, granularity):
            keep = plan_mask(plan, name)
            want = 0.5 if name == "layer1.0.conv1" else 0.25 if name.startswith("layer2.") else 0
            assert int((~keep).sum()) == int(want * keep.numel() + 0.5), (granularity, name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layer_ratios": {"conv1": 1.0}}, r"layer_ratios\['conv1'\] = 1.0 is out of range"),
        ({"layer_ratios": {"conv1": -0.1}}, r"layer_ratios\['conv1'\]"),
        ({"layer_ratios": {"conv1": "half"}}, r"layer_ratios\['conv1'\] must be a number"),
        ({"layer_ratios": {"conv1": True}}, "must be a number"),
        ({"layer_ratios": ["conv1"]}, "layer_ratios must be a mapping"),
        ({"layer_ratios": {"": 0.5}}, "keys must be module-name patterns"),
        (
            {"layer_ratios": {"conv1": 0.5}, "scope": "global"},
            "layer_ratios needs scope: layer and no target",
        ),
        (
            {"layer_ratios": {"conv1": 0.5}, "target": "macs"},
            "layer_ratios needs scope: layer and no target",
        ),
    ],
)
def test_layer_ratios_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        PruningConfig(ratio=0.5, **kwargs)
    assert "\n" not in str(info.value)


def test_layer_ratios_unknown_pattern_is_an_error() -> None:
    model = build_network("resnet20", CLASSES).eval()
    x = torch.randn(1, 3, 8, 8)
    criterion = _TestL1()
    scores = _scores(criterion, model)
    with pytest.raises(ConfigError, match=r"'layer9\.\*' matches no prunable layer"):
        make_plan(model, criterion, scores, PruningConfig(0.2, layer_ratios={"layer9.*": 0.5}), x)
    # a non-key member of a coupled group: point at the group's key conv
    with pytest.raises(ConfigError, match="group keyed by conv1: use 'conv1'"):
        config = PruningConfig(0.2, layer_ratios={"layer1.0.conv2": 0.5})
        make_plan(model, criterion, scores, config, x)
    masks = _TestRandomScores(granularity="kernel")
    with pytest.raises(ConfigError, match="'fc' matches no prunable layer"):
        config = PruningConfig(0.2, layer_ratios={"fc": 0.5})
        make_plan(model, masks, _scores(masks, model), config, x)
    assert PruningConfig(0.2, layer_ratios={}).layer_ratios is None


def test_layer_ratios_plan_json_round_trip() -> None:
    model = build_network("resnet20", CLASSES).eval()
    x = torch.randn(1, 3, 8, 8)
    criterion = _TestL1()
    config = PruningConfig(0.1, layer_ratios={"layer2.*": 0.5, "conv1": 0.25})
    plan = make_plan(model, criterion, _scores(criterion, model), config, x)
    text = json.dumps(plan.to_dict())
    loaded = PruningPlan.from_dict(json.loads(text))
    assert loaded.config == config
    assert list(loaded.config.layer_ratios) == ["layer2.*", "conv1"]  # order kept
    assert loaded.to_dict() == json.loads(text)
    replayed = apply_plan(build_network("resnet20", CLASSES), loaded)
    assert replayed.get_submodule("layer2.0.conv1").out_channels == 16
    # plans written before layer_ratios existed still load
    old = json.loads(text)
    del old["config"]["layer_ratios"]
    assert PruningPlan.from_dict(old).config.layer_ratios is None


def test_bnscale_global_cuts_squeeze_excitation_groups_like_the_rest() -> None:
    """SE convs (no BatchNorm) fall back to L1 norms rescaled to the |gamma| scale.

    With raw L1 norms (3-50 against gamma 1) every expansion group an SE block gates ranked
    above all BN-only groups and stayed whole in a global ranking, while the rest was cut deep.
    """
    model, plan = _plan("mobilenet_v3_large", BNScale(), ratio=0.5, scope="global")
    structure = analyse(model, _x())
    removed = dict(plan.removed)
    se = [g for g in structure.groups if any(".fc2" in n for n, _, _ in g.convs)]
    assert len(se) >= 8
    fractions = [len(removed.get(g.key, [])) / g.channels for g in se]
    assert min(fractions) >= 0.2, fractions
