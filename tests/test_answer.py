"""report.md opens with the answer; the plots show stages, masks apart, chance and efficiency.

Rows are written in the real benchmark.json shape (tests/test_report.py's generator) plus the
accuracy stages and a mask criterion; figures are checked through their matplotlib objects.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from capl.benchmark.tensorboard import log_benchmark, per_layer_figure, run_label
from capl.sweep import plots as plotting
from capl.sweep.plot_accuracy import plot_accuracy_vs_macs
from capl.sweep.report import format_percent, render_report, result_row, summarise
from tests.test_report import make_benchmark

CHANCE = 1 / 3


def bench(strategy: str, ratio: float, seed: int, masked: bool = False) -> dict[str, Any]:
    b = make_benchmark(strategy, ratio, seed)
    after = b["after"]["accuracy"]
    # a falling then recovering accuracy: removal hurts, BN recalibration and retraining help
    b["accuracy_stages"] = {
        "chance": CHANCE,
        "base": {"accuracy": b["before"]["accuracy"]},
        "pruned": {"accuracy": after - 0.3},
        "bn_recalibrated": {"accuracy": after - 0.1},
        "retrained": {"accuracy": after},
    }
    if masked:  # masks keep dense MACs: only the head cut shows
        b["realised"]["params_removed"] = 0.01  # the head cut; the rest became zeros
        b["realised"]["macs_removed"] = 0.002
        b["realised"]["nonzero_params_removed"] = ratio
        b["realised"]["theoretical_speedup"] = 1.002
    return b


def make_rows(seeds: tuple[int, ...] = (0, 1)) -> list[dict[str, Any]]:
    rows = []
    for strategy, masked in (("OCAP", False), ("L1Norm", False), ("Magnitude", True)):
        for ratio in (0.3, 0.6):
            for seed in seeds:
                point = f"{strategy}-r{ratio}-s{seed}"
                rows.append(result_row(point, bench(strategy, ratio, seed, masked)))
    return rows


def _group(summary: list[dict], strategy: str, ratio: float) -> dict:
    return next(g for g in summary if g["criterion"] == strategy and g["ratio"] == ratio)


def test_report_opens_with_the_answer_table() -> None:
    rows = make_rows()
    text = render_report(rows)
    head = text.split("## Sweep")[0]
    assert text.startswith("# capl sweep report\n\n## Answer: criteria at equal budgets")
    assert "chance level 33.33 %" in head and "(3-way task)" in head
    base = statistics.mean(r["accuracy_stages.base.accuracy"] for r in rows)
    assert f"Base model: resnet18 on digits, classes 3, 5, 7: accuracy {100 * base:.2f} %" in head
    tables = head.split("### Budget: ")[1:]
    assert [t.splitlines()[0] for t in tables] == [
        "30 % of the macs removed (measured on the network)",
        "60 % of the macs removed (measured on the network)",
    ]
    header = tables[0].splitlines()[2]
    columns = ["Base acc. (%)", "Pruned acc. (%)", "BN recal. acc. (%)", "Retrained 1 ep acc. (%)"]
    columns += ["MACs removed", "Non-zero params removed", "Theoretical speed-up"]
    columns += ["Measured onnxruntime bs32", "Efficiency torch bs32"]
    for column in columns:
        assert column in header
    body = [line for line in tables[1].splitlines()[4:] if line.startswith("|")]
    # ranked by the retrained accuracy, each cell the mean ± std over the two seeds
    expected = {}
    for strategy in ("OCAP", "L1Norm", "Magnitude"):
        values = [r["accuracy_stages.retrained.accuracy"] for r in rows
                  if r["criterion.name"] == strategy and r["ratio"] == 0.6]  # fmt: skip
        expected[strategy] = (statistics.mean(values), statistics.stdev(values))
    order = sorted(expected, key=lambda s: expected[s][0], reverse=True)
    assert [line.split("|")[1].strip() for line in body] == order
    for line in body:
        name = line.split("|")[1].strip()
        assert format_percent(*expected[name]) in line
    assert "Mean ± std over seeds." in head


def test_retraining_budgets_are_columns_of_one_row_per_criterion() -> None:
    rows = []
    for epochs in (0, 4):
        for strategy in ("OCAP", "L1Norm"):
            b = bench(strategy, 0.3, 0)
            b["retrain_epochs"] = epochs
            if epochs == 0:
                del b["accuracy_stages"]["retrained"]
            else:
                b["accuracy_stages"]["retrained"]["accuracy"] += 0.05 if strategy == "L1Norm" else 0
                b["realised"]["measured_speedup"]["torch"]["bs1"] = 9.99  # not shown
            rows.append(result_row(f"{strategy}-e{epochs}", b))
    table = render_report(rows).split("### Budget: ")[1].split("## Sweep")[0]
    header, _, *body = [line for line in table.splitlines() if line.startswith("|")]
    assert "Retrained 4 ep acc. (%)" in header and "Retrained 0 ep" not in header
    assert [line.split("|")[1].strip() for line in body] == ["L1Norm", "OCAP"]  # one row each
    l1 = next(r for r in rows if r["point_id"] == "L1Norm-e4")
    assert format_percent(l1["accuracy_stages.retrained.accuracy"]) in body[0]
    # the pruned-network measurements are those of the point without retraining
    l1_prune_only = next(r for r in rows if r["point_id"] == "L1Norm-e0")
    speedup = l1_prune_only["realised.measured_speedup.torch.bs1"]
    assert f"{speedup:.2f}x" in body[0] and "9.99x" not in table


def test_single_seed_answer_has_no_spread() -> None:
    head = render_report(make_rows(seeds=(0,))).split("## Sweep")[0]
    assert "±" not in head.split("One run per point")[1]


def _capture(call: Any) -> Figure:
    saved: list[Figure] = []

    def save(fig: Figure, path: str | Path) -> Path:
        saved.append(fig)
        return Path(path)

    call(save)
    assert len(saved) == 1
    return saved[0]


def test_accuracy_plot_stage_panels_masks_apart_chance_line() -> None:
    summary = summarise(make_rows())
    colours = plotting._colours(summary)
    fig = _capture(lambda save: plot_accuracy_vs_macs(summary, "x.png", colours, save))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 6  # structured and mask rows x pruned, BN-recalibrated, retrained
    titles = [ax.get_title() for ax in axes]
    assert titles[0].startswith("Structured criteria") and "right after removal" in titles[0]
    assert titles[3].startswith("Mask criteria") and titles[5].endswith("after retraining")
    assert axes[0].get_xlabel() == "MACs removed (%)"
    assert axes[3].get_xlabel() == "Non-zero parameters removed (%)"
    for ax in axes:
        levels = {round(line.get_ydata()[0], 6) for line in ax.get_lines() if
                  len(set(line.get_ydata())) == 1 and len(line.get_ydata()) == 2}  # fmt: skip
        assert round(100 * CHANCE, 6) in levels  # the chance line in every panel
    # the masks' points sit at their non-zero parameter reduction, not at 0 % MACs
    mask_x = sorted({x for line in axes[3].get_lines() for x in line.get_xdata() if x > 1})
    assert mask_x == pytest.approx([30.0, 60.0])
    # colour per criterion, identical across panels
    ocap = plotting._colours(summary)["OCAP"]
    assert any(line.get_color() == ocap for line in axes[0].get_lines())
    assert "mean ± std over 2 seeds" in fig._suptitle.get_text()
    one = summarise(make_rows(seeds=(0,)))
    fig = _capture(lambda save: plot_accuracy_vs_macs(one, "x.png", colours, save))
    assert "±" not in fig._suptitle.get_text()


def test_speedup_plot_is_log_log_with_identity_and_efficiency_lines(tmp_path: Path) -> None:
    summary = summarise(make_rows())
    figures: list[Figure] = []
    saver = plotting._save
    plotting._save = lambda fig, path: (figures.append(fig), saver(fig, path))[1]
    try:
        assert plotting.plot_speedup(summary, tmp_path / "s.png")
    finally:
        plotting._save = saver
    axes = [ax for ax in figures[0].axes if ax.get_visible()]
    assert [ax.get_xscale() for ax in axes] == ["log", "log"]
    assert [ax.get_yscale() for ax in axes] == ["log", "log"]
    for ax in axes:
        labelled = {line.get_label(): line for line in ax.get_lines()}
        for label, slope in (("measured = theoretical", 1), ("efficiency 0.8", 0.8),
                             ("efficiency 0.5", 0.5)):  # fmt: skip
            xs, ys = labelled[label].get_data()
            assert list(ys) == pytest.approx([slope * x for x in xs])


def test_per_layer_plot_one_panel_per_criterion_at_one_budget(tmp_path: Path) -> None:
    summary = summarise(make_rows())
    figures: list[Figure] = []
    saver = plotting._save
    plotting._save = lambda fig, path: (figures.append(fig), saver(fig, path))[1]
    try:
        plotting.plot_per_layer(summary, tmp_path / "p.png")
    finally:
        plotting._save = saver
    fig = figures[0]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert sorted(ax.get_title(loc="left") for ax in panels) == ["L1Norm", "Magnitude", "OCAP"]
    assert "60 % of the macs removed" in fig._suptitle.get_text()  # nearest 0.5 of 0.3 / 0.6
    ocap = next(ax for ax in panels if ax.get_title(loc="left") == "OCAP")
    group = _group(summary, "OCAP", 0.6)
    heights = [p.get_height() for p in ocap.patches]
    assert heights == pytest.approx([100 * s["mean"] for s in group["per_layer"].values()])
    width, height = fig.get_size_inches() * plotting.DPI
    assert width <= 2000 and height <= 1400  # readable at normal size


def test_tensorboard_names_the_run_and_logs_the_accuracy_as_hp_metric() -> None:
    result = bench("OCAP", 0.5, 0)
    realised = result["realised"]
    channels, macs = 100 * realised["channels_removed"], 100 * realised["macs_removed"]
    label = (
        f"OCAP (global, target macs): {channels:.1f} % of channels, {macs:.1f} % of MACs removed"
    )
    assert run_label(result) == label
    title = per_layer_figure(result["per_layer"], run_label(result)).axes[0].get_title()
    assert title.startswith(label)
    # another ratio rounded to the same widths: the same label, so one drawing serves both
    assert run_label({**result, "ratio": 0.55}) == label
    # a structured plan whose layer kept its outputs but lost inputs still removed channels
    next(iter(result["per_layer"].values()))["kind"] = "weights"
    assert run_label(result) == label
    masked = bench("Magnitude", 0.3, 0, masked=True)  # dense shapes, zeros: a mask
    assert run_label(masked) == "Magnitude (global, target macs): 30.0 % of weights zeroed"

    class Experiment:
        def __init__(self) -> None:
            self.figures: dict[str, Figure] = {}

        def add_figure(self, tag: str, figure: Figure) -> None:
            self.figures[tag] = figure

        def add_text(self, tag: str, text: str) -> None:
            pass

    class Logger:
        experiment = Experiment()
        hparams: dict = {}
        metrics: dict = {}

        def log_metrics(self, metrics: dict, step: int | None = None) -> None:
            pass

        def log_hyperparams(self, params: dict, metrics: dict) -> None:
            self.hparams, self.metrics = params, metrics

    logger = Logger()
    log_benchmark(logger, result)
    assert logger.metrics["hp_metric"] == result["after"]["accuracy"]
    assert not any(k.startswith("_") for k in logger.hparams)
    assert logger.hparams["criterion"] == "OCAP" and logger.hparams["ratio"] == 0.5
    figure = logger.experiment.figures["benchmark/per_layer"]
    assert figure.axes[0].get_title().startswith(label)


def _panel_lines(ax: Any) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """A panel's criterion lines (label -> y values) and its reference levels (label -> ys)."""
    from capl.sweep.plot_accuracy import BASE_LABEL, CHANCE_LABEL

    data = {c.get_label(): list(c.lines[0].get_ydata()) for c in ax.containers}
    levels: dict[str, list[float]] = {}
    for line in ax.get_lines():
        if line.get_label() in (BASE_LABEL, CHANCE_LABEL):
            levels.setdefault(line.get_label(), []).append(float(line.get_ydata()[0]))
    return data, levels


def test_accuracy_plot_splits_class_subsets_with_their_own_base_lines() -> None:
    subsets = {"0;2;4;6": ([0, 2, 4, 6], 0.9, 0.25), "1;3;7;8": ([1, 3, 7, 8], 0.7, 0.25)}
    rows = []
    for name, (indices, base, chance) in subsets.items():
        for strategy in ("OCAP", "L1Norm"):
            for ratio in (0.3, 0.6):
                b = bench(strategy, ratio, 0)
                b["classes"] = {"indices": indices, "names": [str(i) for i in indices]}
                b["accuracy_stages"]["base"]["accuracy"] = base
                b["accuracy_stages"]["chance"] = chance
                drop = 0.4 * ratio if name == "1;3;7;8" else 0.1 * ratio  # similar classes suffer
                b["accuracy_stages"]["pruned"]["accuracy"] = base - drop
                rows.append(result_row(f"{strategy}-{name}-{ratio}", b))
    summary = summarise(rows)
    colours = plotting._colours(summary)
    fig = _capture(lambda save: plot_accuracy_vs_macs(summary, "x.png", colours, save))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 * 3  # one row per subset x pruned, BN-recalibrated, retrained
    first, second = axes[0], axes[3]
    assert "classes 0, 2, 4, 6" in first.get_title() and "right after removal" in first.get_title()
    assert "classes 1, 3, 7, 8" in second.get_title()
    for ax, key in ((first, "0;2;4;6"), (second, "1;3;7;8")):
        _, base, chance = subsets[key]
        data, levels = _panel_lines(ax)
        assert levels == {"base model": [pytest.approx(100 * base)],
                          "chance": [pytest.approx(100 * chance)]}  # fmt: skip
        assert sorted(data) == ["L1Norm", "OCAP"]  # one line per criterion in this subset
        drop = 0.4 if key == "1;3;7;8" else 0.1
        for ys in data.values():
            assert ys == pytest.approx([100 * (base - drop * r) for r in (0.3, 0.6)])
    # one subset: one row per kind of criterion, as before, with the base at that subset's
    one = summarise([r for r in rows if r["classes.indices"] == "0;2;4;6"])
    fig = _capture(lambda save: plot_accuracy_vs_macs(one, "x.png", colours, save))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3 and "classes" not in axes[0].get_title()
    data, levels = _panel_lines(axes[0])
    assert levels["base model"] == [pytest.approx(90.0)] and len(data) == 2
