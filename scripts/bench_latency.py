"""Compare PyTorch and ONNX Runtime latency of resnet18 at 32x32 (run by hand, not in tests).

python scripts/bench_latency.py --threads 2 --batch-sizes 1 32
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch
import torchvision

from capl.benchmark import (
    environment_info,
    export_onnx,
    measure_latency_onnxruntime,
    measure_latency_torch,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"])
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    model = getattr(torchvision.models, args.model)(weights=None, num_classes=10).eval()
    shape = (3, args.size, args.size)
    timing = {"warmup": args.warmup, "repeats": args.repeats, "min_time_s": args.min_time}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        info = export_onnx(model, Path(tmp) / "model.onnx", shape, exporter=args.exporter)
        for batch in args.batch_sizes:
            t = measure_latency_torch(model, shape, batch, threads=args.threads, **timing)
            o = measure_latency_onnxruntime(info["path"], shape, batch, args.threads, **timing)
            rows.append({"batch_size": batch, "torch": t, "onnxruntime": o})
    print(f"{args.model} {shape}, {args.threads} threads, exporter {info['exporter']}")
    print(
        f"{'batch':>5} {'torch med':>10} {'torch p90':>10} {'ort med':>10} {'ort p90':>10} "
        f"{'ort/torch':>9}"
    )
    for row in rows:
        t, o = row["torch"], row["onnxruntime"]
        print(
            f"{row['batch_size']:>5} {t['median_ms']:>10.3f} {t['p90_ms']:>10.3f} "
            f"{o['median_ms']:>10.3f} {o['p90_ms']:>10.3f} {o['median_ms'] / t['median_ms']:>9.2f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "environment": environment_info(args.threads)}, indent=2)
        )


if __name__ == "__main__":
    main()
