"""Measured vs theoretical speed-up of capl's structured plans and Torch-Pruning's (run by hand).

For each network (ImageNet stem at 224x224, untrained seeded weights: latency depends on the
widths only) and each MACs cut (2x: ``target: macs, ratio 0.5``; 4x: ``ratio 0.75``), every
structured capl criterion prunes with capl's defaults (layer scope, ``round_to: auto``), and
Torch-Pruning's ``MetaPruner`` (L1 magnitude, ``round_to`` 8, per-layer ratios) prunes to the
same realised MACs as capl's L1Norm plan (its ratio bisected). With ``--latency-target``, L1Norm
also prunes with ``target: latency`` (a per-layer table on ONNX Runtime at the first batch size,
cached in ``--cache``). With ``--equal-macs``, L1Norm also prunes to the MACs Torch-Pruning
realised, for a same-MACs comparison where the bisection cannot hit capl's. Data-driven
criteria score on seeded random images (standard normal) with random labels among the first
ten classes.

All models of a network (both cuts) and the base are then timed together per backend and batch
size with :func:`capl.benchmark.measure_interleaved` (alternating rounds, identical inputs).
Efficiency = measured / theoretical speed-up, theoretical = conv+linear MACs ratio; measured is
the ratio of median latencies, and each cell also gives the ratio of the fastest runs, which a
noisy machine's slow phases move less.

python scripts/bench_efficiency.py --threads 1 --latency-target --cache /tmp/capl-latency \
    --output /tmp/efficiency.json --markdown /tmp/efficiency_tables.md
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from capl.benchmark import (
    count_conv_linear_macs,
    environment_info,
    export_onnx,
    measure_interleaved,
    ort_timer,
    paired_latency,
    torch_timer,
)
from capl.criteria import available_criteria, get_criterion
from capl.errors import ConfigError
from capl.models import build_network, find_classifier
from capl.pruning import PruningConfig, apply_plan, make_plan
from capl.pruning.latency_table import LatencySpec, network_latency_table
from capl.pruning.select import select_scores

log = logging.getLogger("bench_efficiency")
CLASSES = 10


def calibration(size: int, images: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(images, 3, size, size, generator=gen)
    y = torch.randint(0, CLASSES, (images,), generator=gen)
    return list(zip(x.split(batch), y.split(batch)))


def off_widths(model: nn.Module, multiple: int = 8) -> int:
    """Convs whose output width is not a multiple of ``multiple``."""
    return sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels % multiple)


def torch_pruning_at(base: nn.Module, size: int, macs: int) -> tuple[nn.Module, int, float]:
    """Torch-Pruning MetaPruner (L1, round_to 8) with its ratio bisected to ``macs``.

    Returns:
        The pruned network, its MACs and the ratio that gave it.
    """
    example = torch.zeros(1, 3, size, size)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(8):  # MACs within ~0.5 % of the target
        ratio = (lo + hi) / 2
        net = copy.deepcopy(base)
        _, classifier = find_classifier(net)
        pruner = tp.pruner.MetaPruner(
            net, example, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio, ignored_layers=[classifier], round_to=8, global_pruning=False,
        )  # fmt: skip
        pruner.step()
        got = count_conv_linear_macs(net, (3, size, size))
        if best is None or abs(got - macs) < abs(best[1] - macs):
            best = (net, got, ratio)
        lo, hi = (ratio, hi) if got > macs else (lo, ratio)
    assert best is not None
    return best


def prune_all(
    base: nn.Module, base_macs: int, args: argparse.Namespace, network: str
) -> list[dict[str, Any]]:
    """Every pruned variant of ``base`` (``base_macs`` conv+linear MACs): one per (cut, method)."""
    shape = (3, args.size, args.size)
    example = torch.zeros(1, *shape)
    batches = calibration(args.size, args.images, args.batch)
    names = args.criteria or sorted(
        n for n, c in available_criteria().items() if c.granularity == "filter"
    )
    names = names if "L1Norm" in names else [*names, "L1Norm"]  # Torch-Pruning matches its MACs
    scores = {}
    for name in names:
        start = time.perf_counter()
        scores[name] = select_scores(get_criterion(name), base, batches, list(range(CLASSES)))
        log.info("%s %s scored in %.1f s", network, name, time.perf_counter() - start)
    table = None
    if args.latency_target:
        spec = LatencySpec(backend="onnxruntime", batch_size=args.batch_sizes[0],
                           threads=args.threads, cache=args.cache, repeats=args.table_repeats,
                           exporter=args.exporter)  # fmt: skip
        start = time.perf_counter()
        table = network_latency_table(base, example, spec, PruningConfig(0.0).resolved_round_to())
        log.info("%s latency table in %.1f s", network, time.perf_counter() - start)
    variants = []
    for cut in args.cuts:
        ratio = 1 - 1 / cut
        jobs = [(name, "macs", scope) for scope in args.scopes for name in names]
        if table is not None:
            jobs.append(("L1Norm", "latency", args.scopes[0]))
        for name, target, scope in jobs:
            entry = capl_variant(base, name, scores[name], (ratio, target, scope), example, table)
            variants.append({"cut": cut, **entry})
        l1 = next(v for v in variants if v["cut"] == cut and v["method"] == "L1Norm")  # 1st scope
        l1["macs"] = count_conv_linear_macs(l1["model"], shape)
        net, tp_macs, tp_ratio = torch_pruning_at(base, args.size, l1["macs"])
        variants.append({"cut": cut, "method": "Torch-Pruning MetaPruner (L1, round_to 8)",
                         "target": "macs", "scope": "layer", "model": net, "macs": tp_macs,
                         "tp_ratio": tp_ratio})  # fmt: skip
        if args.equal_macs:  # capl at the MACs Torch-Pruning realised (its bisection misses ours)
            spec = (1 - tp_macs / base_macs, "macs", args.scopes[0])
            entry = capl_variant(base, "L1Norm", scores["L1Norm"], spec, example, table)
            variants.append({"cut": cut, **entry, "method": "L1Norm at Torch-Pruning's MACs"})
    for v in variants:
        if "model" in v:
            if "macs" not in v:  # L1Norm's and Torch-Pruning's were counted above
                v["macs"] = count_conv_linear_macs(v["model"], shape)
            v["off_widths"] = off_widths(v["model"])
    return variants


def capl_variant(
    base: nn.Module,
    name: str,
    scores: dict[str, torch.Tensor],
    spec: tuple[float, str, str],
    example: torch.Tensor,
    table: Any,
) -> dict[str, Any]:
    """capl's plan for ``spec`` = (ratio, target, scope): the pruned model, or the error."""
    ratio, target, scope = spec
    entry: dict[str, Any] = {"method": name, "target": target, "scope": scope}
    try:
        config = PruningConfig(ratio, scope=scope, target=target)
        plan = make_plan(base, get_criterion(name), scores, config, example, latency=table)
    except ConfigError as err:
        return {**entry, "error": str(err)}
    return {**entry, "model": apply_plan(copy.deepcopy(base), plan),
            "selection": plan.report["selection"]}  # fmt: skip


def time_all(
    base: nn.Module, variants: list[dict[str, Any]], args: argparse.Namespace, tmp: Path
) -> dict[str, list[dict[str, Any]]]:
    """Latency summaries per ``"<backend> bs<N>"``: base first, then the variants with models."""
    shape = (3, args.size, args.size)
    # layer scope gives every criterion the same widths: time each architecture once
    unique: dict[tuple, int] = {}
    models = [base]
    for v in variants:
        if "model" in v:
            key = tuple((n, tuple(p.shape)) for n, p in v["model"].named_parameters())
            if key not in unique:
                unique[key] = len(models) - 1
                models.append(v["model"])
            v["unique"] = unique[key]
    paths = []
    if "onnxruntime" in args.backends:
        for i, model in enumerate(models):
            paths.append(
                export_onnx(model, tmp / f"m{i}.onnx", shape, exporter=args.exporter)["path"]
            )
    cells = {}
    for batch in args.batch_sizes:
        for backend in args.backends:
            start = time.perf_counter()
            if backend == "torch":
                timers = [torch_timer(m, shape, batch, threads=args.threads) for m in models]
            else:
                timers = [ort_timer(p, shape, batch, args.threads) for p in paths]
            cells[f"{backend} bs{batch}"] = measure_interleaved(
                timers, args.warmup, args.repeats, 0.0, args.rounds
            )
            log.info("timed %s bs%d in %.0f s", backend, batch, time.perf_counter() - start)
    return cells


def stability(
    base: nn.Module, pruned: nn.Module, args: argparse.Namespace, tmp: Path
) -> list[dict[str, Any]]:
    """The BenchmarkCallback's default protocol, repeated: does its speed-up hold still?"""
    from capl.callbacks import BenchmarkCallback

    defaults = {
        k: v.default
        for k, v in inspect.signature(BenchmarkCallback.__init__).parameters.items()
        if k in ("warmup", "repeats", "min_time_s", "rounds")
    }
    shape = (3, args.size, args.size)
    paths = [
        export_onnx(m, tmp / f"s{i}.onnx", shape, exporter=args.exporter)["path"]
        for i, m in enumerate((base, pruned))
    ]
    out = []
    for _ in range(args.stability):
        start = time.perf_counter()
        b, a = paired_latency(
            [base, pruned], paths, shape, batch_sizes=[args.batch_sizes[0]],
            backends=["onnxruntime"], ort_threads=args.threads, torch_threads=args.threads,
            **defaults,
        )  # fmt: skip
        key = f"bs{args.batch_sizes[0]}"
        b, a = b["onnxruntime"][key], a["onnxruntime"][key]
        out.append({
            "defaults": defaults, "speedup": b["median_ms"] / a["median_ms"],
            "base_ms": b["median_ms"], "pruned_ms": a["median_ms"],
            "busy": [b["busy"], a["busy"]], "round_spread": [b["round_spread"], a["round_spread"]],
            "seconds": time.perf_counter() - start,
        })  # fmt: skip
        log.info("stability: %s", out[-1])
    return out


def results(network: str, base_macs: int, variants: list, cells: dict) -> list[dict[str, Any]]:
    rows = []
    for v in variants:
        keys = ("cut", "method", "target", "scope", "error", "off_widths", "tp_ratio", "unique")
        row = {k: v.get(k) for k in keys}
        row["network"] = network
        if "model" in v:
            index = 1 + v["unique"]
            row["macs_removed"] = 1 - v["macs"] / base_macs
            row["theoretical_speedup"] = base_macs / v["macs"]
            row["cells"] = {}
            for cell, summaries in cells.items():
                b, m = summaries[0], summaries[index]
                measured = b["median_ms"] / m["median_ms"]
                fastest = b["min_ms"] / m["min_ms"]
                row["cells"][cell] = {
                    "base_ms": b["median_ms"], "ms": m["median_ms"], "speedup": measured,
                    "efficiency": measured / row["theoretical_speedup"],
                    "speedup_min": fastest,
                    "efficiency_min": fastest / row["theoretical_speedup"],
                    "busy": bool(b["busy"] or m["busy"]),
                    "round_spread": max(b["round_spread"], m["round_spread"]),
                }  # fmt: skip
            selection = v.get("selection") or {}
            if "predicted_latency_ms" in selection:
                row["predicted_speedup"] = (
                    selection["predicted_base_latency_ms"] / selection["predicted_latency_ms"]
                )
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], cells: list[str]) -> str:
    out = []
    for network in dict.fromkeys(r["network"] for r in rows):
        for cut in dict.fromkeys(r["cut"] for r in rows if r["network"] == network):
            out += [f"### {network}, {cut}x MACs cut", ""]
            head = ["method", "MACs removed", "theoretical", "convs off x8"]
            titles = [f"{c} speed-up (eff.; eff. of fastest runs)" for c in cells]
            out.append("| " + " | ".join(head + titles) + " |")
            out.append("|" + "---|" * (len(head) + len(cells)))
            for r in rows:
                if r["network"] != network or r["cut"] != cut:
                    continue
                name = f"{r['method']} {r['scope']}"
                if r["target"] == "latency":
                    name += " (target latency)"
                if r.get("error"):
                    out.append(
                        f"| {name} | n/a: {r['error']} |" + " |" * (len(head) + len(cells) - 2)
                    )
                    continue
                line = [name, f"{100 * r['macs_removed']:.1f} %",
                        f"{r['theoretical_speedup']:.2f}x", str(r["off_widths"])]  # fmt: skip
                for c in cells:
                    x = r["cells"][c]
                    mark = "†" if x["busy"] else ""
                    eff = f"{x['efficiency']:.2f}; {x['efficiency_min']:.2f}"
                    line.append(f"{x['speedup']:.2f}x ({eff}){mark}")
                out.append("| " + " | ".join(line) + " |")
            out.append("")
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["resnet18", "mobilenet_v3_large"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cuts", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--scopes", nargs="+", default=["layer", "global"])
    parser.add_argument("--criteria", nargs="+", default=None, help="default: every filter one")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    parser.add_argument("--threads", type=int, default=1)
    # 6 runs in 3 rounds moved a MobileNetV3-L cell by up to 0.27 between identical runs on a
    # noisy 2-core VM (benchmarks/efficiency.md); these are the settings of its rerun, with the
    # rounds of measure_interleaved's default (one per timed run) since bench_interleaving.py
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=12, help="timed runs per model per cell")
    parser.add_argument("--rounds", type=int, default=None, help="default: one per timed run")
    parser.add_argument("--images", type=int, default=8, help="random calibration images")
    parser.add_argument("--batch", type=int, default=8, help="calibration batch size")
    parser.add_argument(
        "--exporter", default="torchscript", choices=["auto", "dynamo", "torchscript"]
    )
    parser.add_argument(
        "--stability",
        type=int,
        default=0,
        help="repeat the BenchmarkCallback's default protocol this often",
    )
    parser.add_argument("--latency-target", action="store_true")
    parser.add_argument(
        "--equal-macs",
        action="store_true",
        help="also prune with L1Norm to the MACs Torch-Pruning realised (same-MACs comparison)",
    )
    parser.add_argument("--cache", default=None, help="latency table cache folder")
    parser.add_argument("--table-repeats", type=int, default=5, help="runs per table entry")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    start, load = time.perf_counter(), os.getloadavg()
    rows, cell_names, stable = [], [], []
    for network in args.networks:
        torch.manual_seed(0)
        base = build_network(network, 1000).eval()
        base_macs = count_conv_linear_macs(base, (3, args.size, args.size))
        variants = prune_all(base, base_macs, args, network)
        with tempfile.TemporaryDirectory(prefix="capl-eff-") as tmp:
            cells = time_all(base, variants, args, Path(tmp))
            if args.stability and network == args.networks[0]:
                l1 = next(v for v in variants if v["method"] == "L1Norm" and "model" in v)
                stable = stability(base, l1["model"], args, Path(tmp))
        cell_names = list(cells)
        rows += results(network, base_macs, variants, cells)
    text = markdown(rows, cell_names)
    print(text)
    payload = {
        "command": "python scripts/bench_efficiency.py " + " ".join(sys.argv[1:]),
        "rows": rows,
        "stability": stable,
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "seconds": time.perf_counter() - start,
        "environment": environment_info(args.threads),
    }
    if args.output:
        args.output.write_text(json.dumps(payload, indent=1, default=str))
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
