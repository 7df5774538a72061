"""capl.benchmark against independent computations (hand arithmetic, torchvision figures)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune

from capl.benchmark import (
    compare_models,
    count_conv_linear_macs,
    count_macs,
    count_nonzero_params,
    count_params,
    effective_state_dict,
    environment_info,
    export_onnx,
    format_table,
    layer_report,
    make_input,
    measure_latency_onnxruntime,
    measure_latency_torch,
    ort_kernel_times,
    peak_memory,
    per_layer_diff,
    profile_model,
    profiled_runs,
    realised,
    sparse_decode,
    sparse_encode,
    sparse_size_bytes,
    state_dict_size_bytes,
)

FAST = {"warmup": 1, "repeats": 3, "min_time_s": 0.0}


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 5))


def tiny_bn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8, 3),
    )


def snapshot(model: nn.Module) -> dict:
    """Everything that must not change: tensors, flags, hooks and attribute names."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "flags": [m.training for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        "attrs": [sorted(vars(m)) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["flags"] == b["flags"]
    assert a["hooks"] == b["hooks"]
    assert a["attrs"] == b["attrs"]
    assert a["requires_grad"] == b["requires_grad"]
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN layers non-trivial statistics so outputs of untrained nets are O(1)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


# --- counting -------------------------------------------------------------------------------


def test_tiny_model_macs_and_params_by_hand():
    model = tiny()
    conv = 8 * 8 * 4 * (3 * 3 * 3)  # output positions x out channels x (in x kh x kw) = 6912
    linear = 256 * 5  # in x out = 1280
    assert count_conv_linear_macs(model, (3, 8, 8)) == conv + linear
    # ptflops also counts conv bias adds (one per output element), ReLU (one per element)
    # and the linear bias (one per output).
    assert count_macs(model, (3, 8, 8)) == conv + 256 + 256 + linear + 5
    assert count_params(model) == (4 * 27 + 4) + (256 * 5 + 5)


@pytest.mark.parametrize(
    ("name", "published"), [("resnet18", 1.814e9), ("mobilenet_v3_large", 0.217e9)]
)
def test_conv_linear_macs_match_torchvision(name, published):
    model = getattr(torchvision.models, name)(weights=None)
    macs = count_conv_linear_macs(model, (3, 224, 224))
    assert abs(macs - published) / published < 0.005


def test_count_macs_leaves_model_untouched():
    model = tiny_bn().train()
    before = snapshot(model)
    ptflops = count_macs(model, (3, 8, 8))
    conv_linear = count_conv_linear_macs(model, (3, 8, 8))
    assert ptflops > conv_linear > 0
    assert_same(before, snapshot(model))
    assert not any(
        hasattr(m, "__flops__") or hasattr(m, "start_flops_count") for m in model.modules()
    )


def test_nonzero_params_with_zeroed_weights_and_prune_mask():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 4, bias=False))
    with torch.no_grad():
        model[0].weight[:3] = 0  # 30 zeros
        model[0].bias.fill_(1.0)
        model[1].weight.fill_(2.0)
    assert count_params(model) == 110 + 40
    assert count_nonzero_params(model) == 150 - 30

    prune.random_unstructured(model[1], "weight", amount=0.25)  # 10 of 40 masked
    # weight_orig is still all 2.0: only the effective weight may be counted, and only once.
    assert count_params(model) == 150
    assert count_nonzero_params(model) == 150 - 30 - 10
    report = layer_report(model)
    assert report["1"]["nonzero"] == 30 and report["1"]["params"] == 40


def test_masked_state_dict_is_the_effective_dense_one():
    model = tiny()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    state = effective_state_dict(model)
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    assert torch.equal(state["0.weight"], model[0].weight_orig * model[0].weight_mask)
    dense = tiny()
    dense.load_state_dict(state)
    assert state_dict_size_bytes(model) == state_dict_size_bytes(dense)
    # a model with its mask doubles the weight in a plain torch.save
    assert len(model.state_dict()) == len(dense.state_dict()) + 1


def test_sparse_size_much_smaller_at_90_percent_zeros_and_lossless():
    torch.manual_seed(0)
    dense = nn.Linear(200, 500)
    sparse = copy.deepcopy(dense)
    prune.l1_unstructured(sparse, "weight", amount=0.9)
    dense_bytes = state_dict_size_bytes(dense)
    # random float32 weights barely compress: dense encoding stays near the raw size
    assert sparse_size_bytes(dense) > 0.8 * dense_bytes
    # 10% of values + a 1-bit mask: about (0.1 * 4 + 1/8) / 4 = 13% of dense
    assert sparse_size_bytes(sparse) < 0.2 * dense_bytes
    state = effective_state_dict(sparse)
    decoded = sparse_decode(sparse_encode(state))
    assert decoded.keys() == state.keys()
    for key in state:
        assert decoded[key].dtype == state[key].dtype
        assert torch.equal(decoded[key], state[key])


def test_layer_report_and_per_layer_diff():
    before = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    after = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    prune.ln_structured(after[1], "weight", amount=0.5, n=1, dim=0)  # mask 2 of 4 filters
    rep_b, rep_a = layer_report(before), layer_report(after)
    assert list(rep_b) == ["0", "1", "3"]
    assert rep_b["0"] == {
        "type": "Conv2d",
        "in_channels": 3,
        "out_channels": 8,
        "groups": 1,
        "kernel_size": [3, 3],
        "params": 8 * 27 + 8,
        "nonzero": int((before[0].weight != 0).sum() + (before[0].bias != 0).sum()),
        "live_out_channels": 8,
    }
    assert rep_b["3"]["type"] == "Linear" and rep_b["3"]["out_channels"] == 2
    diff = per_layer_diff(rep_b, rep_a)
    assert diff["0"]["out_channels_before"] == 8 and diff["0"]["out_channels_after"] == 6
    assert diff["0"]["channels_removed"] == pytest.approx(0.25)
    assert diff["1"]["out_channels_after"] == 4 and diff["1"]["live_out_channels_after"] == 2
    assert diff["1"]["channels_removed"] == pytest.approx(0.5)
    assert diff["1"]["nonzero_after"] == 2 * 6 + 4  # 2 live filters of 6 weights, 4 biases
    assert (diff["0"]["kind"], diff["0"]["before"], diff["0"]["after"]) == ("channels", 8, 6)
    assert per_layer_diff(before, after) == diff  # models are accepted too


def test_per_layer_diff_unstructured_masks_report_weights():
    before = nn.Sequential(nn.Linear(10, 10, bias=False))
    with torch.no_grad():
        before[0].weight.fill_(1.0)
    after = copy.deepcopy(before)
    prune.random_unstructured(after[0], "weight", amount=0.3)  # 30 of 100, rows stay live
    entry = per_layer_diff(before, after)["0"]
    assert (entry["kind"], entry["before"], entry["after"]) == ("weights", 100, 70)


# --- ONNX -----------------------------------------------------------------------------------


def _ort_vs_torch(model: nn.Module, path, exporter: str, batch: int = 3) -> float:
    info = export_onnx(model, path, (3, 32, 32), exporter=exporter)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = make_input((3, 32, 32), batch, seed=1)
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == expected.shape
    assert np.abs(expected).max() > 1e-3  # a meaningful comparison, not zeros vs zeros
    assert info["bytes"] == path.stat().st_size
    return float(np.abs(got - expected).max()), info


def test_onnx_matches_torch_resnet18(tmp_path):
    model = randomise_bn(torchvision.models.resnet18(weights=None, num_classes=10))
    err, info = _ort_vs_torch(model, tmp_path / "r18.onnx", "auto")
    assert info["exporter"] == "dynamo"
    assert err < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["r18.onnx"]  # no temp file left


def test_onnx_matches_torch_mobilenet_v3(tmp_path):
    model = randomise_bn(torchvision.models.mobilenet_v3_large(weights=None, num_classes=10))
    with torch.no_grad():
        model.classifier[-1].weight.normal_(0, 1)
    err, info = _ort_vs_torch(model, tmp_path / "mnv3.onnx", "torchscript")
    assert info["exporter"] == "torchscript"
    assert err < 1e-4


def test_onnx_export_applies_prune_masks(tmp_path):
    model = tiny_bn()
    prune.l1_unstructured(model[3], "weight", amount=0.8)
    hooks = len(model[3]._forward_pre_hooks)
    err, _ = _ort_vs_torch(model, tmp_path / "masked.onnx", "auto")
    assert err < 1e-4
    assert len(model[3]._forward_pre_hooks) == hooks and hasattr(model[3], "weight_orig")
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(model, tmp_path / "x.onnx", (3, 32, 32), exporter="tflite")


# --- latency and memory -----------------------------------------------------------------------


def test_make_input_is_seeded():
    a = make_input((3, 8, 8), 2, seed=7)
    assert torch.equal(a, make_input((3, 8, 8), 2, seed=7))
    assert not torch.equal(a, make_input((3, 8, 8), 2, seed=8))
    assert a.shape == (2, 3, 8, 8)


def test_torch_latency_dict_and_mode_restored():
    model = tiny_bn().train()
    before = snapshot(model)
    result = measure_latency_torch(model, (3, 16, 16), batch_size=2, threads=1, **FAST)
    assert_same(before, snapshot(model))
    assert result["repeats"] >= 3
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["batch_size"] == 2 and result["device"] == "cpu" and result["threads"] == 1
    json.dumps(result)


def test_torch_latency_threads_restored_and_min_time():
    threads = torch.get_num_threads()
    result = measure_latency_torch(
        tiny(), (3, 8, 8), warmup=0, repeats=1, min_time_s=0.05, threads=1
    )
    assert torch.get_num_threads() == threads
    assert result["total_s"] >= 0.05 and result["repeats"] > 1


def test_onnxruntime_latency(tmp_path):
    path = tmp_path / "tiny.onnx"
    export_onnx(tiny_bn(), path, (3, 16, 16), exporter="torchscript")
    result = measure_latency_onnxruntime(path, (3, 16, 16), batch_size=4, threads=1, **FAST)
    assert result["repeats"] >= 3
    assert result["median_ms"] <= result["p90_ms"]
    assert result["threads"] == 1 and result["provider"] == "CPUExecutionProvider"
    assert result["batch_size"] == 4
    json.dumps(result)


def test_onnxruntime_sessions_do_not_spin_and_still_compute(tmp_path):
    """Interleaved timing keeps sessions alive side by side: their pools must sleep, not spin."""
    from capl.benchmark import ort_session

    model = tiny_bn().eval()
    path = tmp_path / "tiny.onnx"
    export_onnx(model, path, (3, 16, 16), exporter="torchscript")
    session = ort_session(path, threads=2)
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2
    x = torch.randn(3, 3, 16, 16)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-5)
    # ORT's own default, for comparison runs (scripts/bench_ort_spinning.py)
    spinning = ort_session(path, threads=2, spinning=True).get_session_options()
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    # profiled: the same settings, and a trace of the nodes it ran (scripts/profile_layers.py)
    profiled = ort_session(path, threads=2, profile=tmp_path / "trace")
    assert (
        profiled.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        == "0"
    )
    for _ in range(3):
        profiled.run(None, {profiled.get_inputs()[0].name: x.numpy()})
    trace = Path(profiled.end_profiling())
    assert trace.parent == tmp_path and trace.name.startswith("trace")
    events = json.loads(trace.read_text())
    ops = {e["args"]["op_name"] for e in events if e.get("cat") == "Node"}
    assert "Conv" in ops
    # per run after the warm-up, each node's kernel time, within that run's own duration
    run_ms = sorted((e["ts"], e["dur"] / 1000) for e in events if e.get("name") == "model_run")
    runs = ort_kernel_times(trace, warmup=1)
    assert len(runs) == 2
    for run, (_, total) in zip(runs, run_ms[1:]):
        assert any(op == "Conv" for op, _ in run) and all(ms >= 0 for ms in run.values())
        assert 0 < sum(run.values()) <= total
    # the same from a fresh profiled session on the seeded input; its trace is not left behind
    before = set(tmp_path.iterdir())
    fresh = profiled_runs(path, (3, 16, 16), 3, threads=1, warmup=1, runs=2)
    assert len(fresh) == 2 and all(any(op == "Conv" for op, _ in run) for run in fresh)
    assert set(tmp_path.iterdir()) == before


def test_peak_memory_cpu_bounds():
    model = tiny_bn().train()
    result = peak_memory(model, (3, 16, 16), batch_size=2)
    assert model.training
    tensors = [*model.parameters(), *model.buffers()]  # num_batches_tracked is int64
    param_bytes = sum(t.numel() * t.element_size() for t in tensors)
    input_bytes = 2 * 3 * 16 * 16 * 4
    assert result["method"] == "torch_profiler_allocations"
    assert result["baseline_bytes"] == param_bytes + input_bytes
    # at least one 2x8x16x16 float32 activation is alive during the forward
    assert result["activation_bytes"] >= 2 * 8 * 16 * 16 * 4
    assert result["peak_bytes"] == result["baseline_bytes"] + result["activation_bytes"]


# --- whole-model reports ---------------------------------------------------------------------


def test_realised_on_known_numbers():
    def block(channels, params, nonzero, macs, median_t, median_o, size):
        return {
            "macs": macs,
            "conv_linear_macs": macs,
            "params": params,
            "nonzero_params": nonzero,
            "size_bytes": size,
            "sparse_size_bytes": None,
            "layers": {"c": {"type": "Conv2d", "live_out_channels": channels}},
            "latency_ms": {
                "torch": {"bs1": {"median_ms": median_t}},
                "onnxruntime": {"bs1": {"median_ms": median_o}},
            },
        }

    before = block(100, 1000, 1000, 4000, 10.0, 8.0, 4000)
    after = block(60, 400, 300, 1000, 5.0, 4.0, 1600)
    out = realised(before, after)
    assert out["channels_removed"] == pytest.approx(0.4)
    assert out["params_removed"] == pytest.approx(0.6)
    assert out["nonzero_params_removed"] == pytest.approx(0.7)
    assert out["macs_removed"] == pytest.approx(0.75)
    assert out["theoretical_speedup"] == pytest.approx(4.0)
    assert out["size_ratio"] == pytest.approx(2.5)
    assert out["measured_speedup"]["torch"]["bs1"] == pytest.approx(2.0)
    assert out["efficiency"]["torch"]["bs1"] == pytest.approx(0.5)
    assert out["measured_speedup"]["onnxruntime"]["bs1"] == pytest.approx(2.0)
    assert out["efficiency"]["onnxruntime"]["bs1"] == pytest.approx(0.5)


def test_profile_model_leaves_model_untouched_and_is_json(tmp_path):
    model = tiny_bn().train()
    x = make_input((3, 16, 16), 2, seed=3)
    model.eval()
    with torch.no_grad():
        out_before = model(x)
    model.train()
    before = snapshot(model)
    block = profile_model(
        model,
        (3, 16, 16),
        batch_sizes=(1, 2),
        ort_threads=1,
        workdir=tmp_path,
        name="tiny",
        exporter="torchscript",
        **FAST,
    )
    assert_same(before, snapshot(model))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), out_before)
    assert block["errors"] == {}
    assert block["conv_linear_macs"] == 16 * 16 * 8 * 27 + 16 * 16 * 8 * 72 + 8 * 3
    assert block["params"] == count_params(model)
    assert set(block["latency_ms"]) == {"torch", "onnxruntime"}
    assert set(block["latency_ms"]["onnxruntime"]) == {"bs1", "bs2"}
    assert block["latency_ms"]["onnxruntime"]["bs1"]["threads"] == 1
    assert (tmp_path / "tiny.onnx").is_file()
    assert set(block["peak_memory"]) == {"bs1", "bs2"}
    assert block["peak_memory_bytes"] == block["peak_memory"]["bs2"]["peak_bytes"]
    assert block["peak_memory_method"] == "torch_profiler_allocations"
    json.dumps(block, allow_nan=False)


def test_compare_models_and_table():
    before = tiny_bn()
    after = copy.deepcopy(before)
    prune.ln_structured(after[3], "weight", amount=0.5, n=1, dim=0)
    result = compare_models(
        before, after, (3, 16, 16), batch_sizes=(1,), backends=("torch",), memory=False, **FAST
    )
    assert set(result) == {"before", "after", "realised", "per_layer", "environment"}
    assert result["after"]["masked"] and result["after"]["sparse_size_bytes"] is not None
    # 4 of the 16 conv filters are masked; masks remove no MACs
    assert result["realised"]["channels_removed"] == pytest.approx(4 / 16)
    assert result["realised"]["theoretical_speedup"] == pytest.approx(1.0)
    assert result["realised"]["measured_speedup"]["torch"]["bs1"] > 0
    assert result["per_layer"]["3"]["kind"] == "channels"
    assert (result["per_layer"]["3"]["before"], result["per_layer"]["3"]["after"]) == (8, 4)
    assert result["environment"]["onnxruntime_threads"] is None  # ORT was not timed
    table = format_table(result["before"], result["after"])
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "before", "after", "after/before"]
    assert any(line.startswith("torch bs1 median ms") for line in lines)
    json.dumps(result, allow_nan=False)


def test_environment_info():
    env = environment_info(ort_threads=3)
    assert env["torch"] == torch.__version__.split("+")[0]
    assert env["onnxruntime"] == ort.__version__
    assert env["torchvision"] and env["ptflops"] and env["torch_pruning"] and env["lightning"]
    assert env["onnxruntime_threads"] == 3 and env["threads"] == torch.get_num_threads()
    assert env["device"] in {"cpu", "cuda"}
    assert isinstance(env["cpu_model"], str) and env["cpu_model"]
    json.dumps(env)


def test_log_benchmark_scalars_and_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from capl.benchmark.tensorboard import benchmark_scalars, log_benchmark

    before = tiny_bn()
    after = copy.deepcopy(before)
    prune.ln_structured(after[3], "weight", amount=0.5, n=1, dim=0)
    result = compare_models(
        before, after, (3, 16, 16), batch_sizes=(1,), backends=("torch",), memory=False, **FAST
    )
    result.update(model="tiny", criterion={"name": "L1"}, ratio=0.5)
    scalars = benchmark_scalars(result)
    assert scalars["benchmark/after/macs"] == result["after"]["macs"]
    assert scalars["benchmark/realised/channels_removed"] == pytest.approx(0.25)
    assert scalars["benchmark/before/latency_ms/torch/bs1"] == pytest.approx(
        result["before"]["latency_ms"]["torch"]["bs1"]["median_ms"]
    )

    class Recorder:
        def __init__(self):
            self.metrics = {}

        def log_metrics(self, metrics, step=None):
            self.metrics.update(metrics)

    recorder = Recorder()
    log_benchmark(recorder, result)
    assert recorder.metrics == scalars
    tb = TensorBoardLogger(tmp_path, name="tb")
    log_benchmark(tb, result)
    tb.finalize("success")
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_per_class_figure_shows_before_and_after_accuracy() -> None:
    from capl.benchmark.tensorboard import per_class_figure

    figure = per_class_figure({"3": 0.99, "5": 1.0}, {"3": 0.5, "5": 0.25})
    bars = [patch.get_height() for patch in figure.axes[0].patches]
    assert bars == pytest.approx([99.0, 100.0, 50.0, 25.0])


def test_equal_figures_are_rendered_once_as_add_figure_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torch.utils.tensorboard._utils import figure_to_image

    from capl.benchmark import tensorboard

    builds: list[str] = []
    for kind, make in list(tensorboard._FIGURES.items()):
        monkeypatch.setitem(
            tensorboard._FIGURES, kind, lambda *a, _k=kind, _m=make: builds.append(_k) or _m(*a)
        )
    tensorboard._rendered.cache_clear()

    class Experiment:
        def __init__(self) -> None:
            self.images: dict[str, np.ndarray] = {}

        def add_image(self, tag: str, image: np.ndarray, dataformats: str) -> None:
            assert dataformats == "HWC" and image.dtype == np.uint8
            self.images[tag] = image

        def add_figure(self, tag: str, figure: object) -> None:
            raise AssertionError("a TensorBoard writer gets the rendered image")

        def add_text(self, tag: str, text: str) -> None:
            pass

    class Logger:
        def __init__(self) -> None:
            self.experiment = Experiment()

        def log_metrics(self, metrics: dict, step: int | None = None) -> None:
            pass

        def log_hyperparams(self, params: dict, metrics: dict) -> None:
            pass

    per_layer = {"conv1": {"before": 16, "after": 8}, "conv2": {"before": 32, "after": 24}}
    result = {"criterion": {"name": "L1Norm"}, "ratio": 0.3, "scope": "layer",
              "per_layer": per_layer, "before": {"accuracy_per_class": {"3": 0.9, "5": 1.0}},
              "after": {"accuracy_per_class": {"3": 0.5, "5": 0.75}},
              "realised": {"channels_removed": 0.25, "macs_removed": 0.4}}  # fmt: skip
    first, second = Logger(), Logger()
    tensorboard.log_benchmark(first, result)
    # a point of another ratio pruned to the same widths (round_to): its figures are equal
    tensorboard.log_benchmark(second, {**copy.deepcopy(result), "ratio": 0.35})
    assert builds == ["per_layer", "per_class_accuracy"]  # the second point's: reused
    for tag, image in first.experiment.images.items():
        assert np.array_equal(image, second.experiment.images[tag])
    # pixel for pixel what TensorBoardLogger's add_figure would have stored
    drawn = figure_to_image(tensorboard.per_layer_figure(per_layer, tensorboard.run_label(result)))
    assert np.array_equal(first.experiment.images["benchmark/per_layer"], drawn.transpose(1, 2, 0))

    result["after"]["accuracy_per_class"]["5"] = 0.25
    third = Logger()
    tensorboard.log_benchmark(third, result)
    assert builds == ["per_layer", "per_class_accuracy", "per_class_accuracy"]
    changed = third.experiment.images["benchmark/per_class_accuracy"]
    assert not np.array_equal(changed, first.experiment.images["benchmark/per_class_accuracy"])


def test_measure_interleaved_alternates_models_and_summarises_each() -> None:
    import contextlib

    from capl.benchmark import measure_interleaved

    calls: list[str] = []

    @contextlib.contextmanager
    def fake_timer(name: str, ms: float):
        def step() -> float:
            calls.append(name)
            return ms

        yield step, {"backend": name}

    results = measure_interleaved(
        [fake_timer("a", 2.0), fake_timer("b", 5.0)], warmup=1, repeats=4, min_time_s=0, rounds=2
    )
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"]  # warm-up, A B, B A
    assert [r["median_ms"] for r in results] == [2.0, 5.0]
    assert [r["repeats"] for r in results] == [4, 4]
    assert [r["backend"] for r in results] == ["a", "b"] and results[0]["rounds"] == 2
    # the default: one round per timed run, each model's runs spread evenly (A B, B A, ...)
    calls.clear()
    results = measure_interleaved(
        [fake_timer("a", 2.0), fake_timer("b", 5.0)], warmup=0, repeats=4, min_time_s=0
    )
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [r["rounds"] for r in results] == [4, 4] and [r["repeats"] for r in results] == [4, 4]
    # a fast model still runs until its share of min_time_s: 9 ms a round of a 2 ms model
    calls.clear()
    fast, slow = measure_interleaved(
        [fake_timer("a", 2.0), fake_timer("b", 50.0)], warmup=0, repeats=3, min_time_s=0.027
    )
    assert fast["repeats"] == 15 and slow["repeats"] == 3
    assert calls[:6] == ["a"] * 5 + ["b"]


def test_latency_flags_a_busy_machine() -> None:
    import contextlib

    from capl.benchmark import measure_interleaved

    @contextlib.contextmanager
    def timer(times: list[float]):
        queue = iter(times)
        yield (lambda: next(queue)), {}

    # steady: rounds within 5 % of each other, short tail
    calm, slow_round, tail = measure_interleaved(
        [
            timer([10.0, 10.2, 9.9, 10.1, 10.3, 10.0, 9.8, 10.1]),
            timer([10.0, 10.1, 10.0, 9.9, 17.0, 16.5, 10.0, 10.1]),  # one round 65 % slower
            timer([10.0] * 7 + [40.0]),
        ],
        warmup=0,
        repeats=8,
        min_time_s=0,
        rounds=4,
    )
    assert calm["round_medians_ms"] == pytest.approx([10.1, 10.0, 10.15, 9.95])
    assert calm["round_spread"] == pytest.approx(0.2 / 10.05) and not calm["busy"]
    assert slow_round["round_spread"] > 0.5 and slow_round["busy"]
    assert tail["round_spread"] == pytest.approx(1.5)  # last round's median is 25 ms
    assert tail["p90_over_median"] == pytest.approx(1.9) and tail["busy"]
    # a single measurement is judged on consecutive chunks
    from capl.benchmark.latency import _summary

    assert not _summary([5.0] * 12)["busy"]
    jump = _summary([5.0] * 6 + [9.0] * 6)
    assert len(jump["round_medians_ms"]) == 4 and jump["busy"]
    # many rounds (the default: one per timed run) are judged in six groups of consecutive rounds
    one_slow_run = [10.0] * 5 + [17.0] + [10.0] * 18
    slow_phase = [10.0] * 8 + [17.0] * 4 + [10.0] * 12
    calm, phase = measure_interleaved(
        [timer(one_slow_run), timer(slow_phase)], warmup=0, repeats=24, min_time_s=0
    )
    assert calm["rounds"] == 24 and len(calm["round_medians_ms"]) == 6
    # groups of four single-run rounds: one slow run leaves its group's median at 10 ms
    assert calm["round_medians_ms"] == [10.0] * 6 and not calm["busy"]
    assert phase["round_medians_ms"] == [10.0, 10.0, 17.0, 10.0, 10.0, 10.0] and phase["busy"]


def test_profile_model_without_latency_exports_onnx_for_paired_timing(tmp_path) -> None:
    """The callback's path: profile without timing, then time both models side by side."""
    from capl.benchmark import paired_latency

    base = tiny_bn()
    pruned = copy.deepcopy(base)
    prune.ln_structured(pruned[3], "weight", amount=0.5, n=1, dim=0)
    blocks = [
        profile_model(
            net,
            (3, 16, 16),
            batch_sizes=(1,),
            torch_threads=1,
            workdir=tmp_path,
            name=name,
            exporter="torchscript",
            memory=False,
            latency=False,
            **FAST,
        )
        for net, name in ((base, "base"), (pruned, "pruned"))
    ]
    for block, name in zip(blocks, ("base", "pruned")):
        assert block["errors"] == {}
        assert block["latency_ms"] == {}  # exported, not timed
        assert block["onnx"]["path"] == str(tmp_path / f"{name}.onnx")
    threads = torch.get_num_threads()
    latencies = paired_latency(
        [base, pruned],
        [b["onnx"]["path"] for b in blocks],
        (3, 16, 16),
        batch_sizes=(1, 2),
        torch_threads=1,
        rounds=2,
        **FAST,
    )
    assert torch.get_num_threads() == threads
    assert len(latencies) == 2
    for latency in latencies:
        assert set(latency) == {"torch", "onnxruntime"}
        for backend in ("torch", "onnxruntime"):
            assert set(latency[backend]) == {"bs1", "bs2"}
            assert latency[backend]["bs2"]["batch_size"] == 2
            assert latency[backend]["bs1"]["rounds"] == 2
            assert latency[backend]["bs1"]["repeats"] >= 3
            assert latency[backend]["bs1"]["threads"] == 1  # ORT follows torch_threads
    # no ONNX file for one model: ORT is left out for both, torch still timed
    only_torch = paired_latency(
        [base, pruned], [blocks[0]["onnx"]["path"], None], (3, 16, 16), batch_sizes=(1,), **FAST
    )
    assert [set(block) for block in only_torch] == [{"torch"}, {"torch"}]
    json.dumps([blocks, latencies], allow_nan=False)


def test_shape_profile_is_the_architecture_part_of_a_profile(tmp_path) -> None:
    """Export and peak memory: the same with other weights, and left out by ``shapes=False``."""
    from capl.benchmark import shape_profile

    torch.manual_seed(0)
    model, other_weights = tiny_bn(), tiny_bn()
    options = {"batch_sizes": (1, 2), "exporter": "torchscript"}
    blocks = [
        shape_profile(net, (3, 16, 16), workdir=tmp_path / name, name=name, **options)
        for net, name in ((model, "model"), (other_weights, "other"))
    ]
    full = profile_model(model, (3, 16, 16), latency=False, **options, **FAST)
    for block in (*blocks, full):
        assert block["errors"] == {}
        assert block["peak_memory_batch_size"] == 2 and block["peak_memory_bytes"] > 0
        assert block["onnx"]["bytes"] > 0
    assert blocks[0]["onnx"]["path"] == str(tmp_path / "model" / "model.onnx")
    assert (tmp_path / "other" / "other.onnx").is_file()
    assert full["onnx"]["path"] is None  # no workdir: a temporary export
    assert blocks[0]["onnx"]["bytes"] == blocks[1]["onnx"]["bytes"] == full["onnx"]["bytes"]
    for batch in ("bs1", "bs2"):
        peaks = [b["peak_memory"][batch]["activation_bytes"] for b in (*blocks, full)]
        assert len(set(peaks)) == 1  # shapes, not weights, decide it
    without = profile_model(model, (3, 16, 16), latency=False, shapes=False, **options, **FAST)
    assert without["onnx"] is None and without["peak_memory"] == {}
    assert without["peak_memory_bytes"] is None
    assert without["macs"] == full["macs"] and without["size_bytes"] == full["size_bytes"]
