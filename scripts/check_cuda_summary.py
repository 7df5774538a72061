"""Summarise the benchmark.json files under a folder: device, latency cells, memory, stages.

python scripts/check_cuda_summary.py runs/cuda_check     # what scripts/check_cuda.sh prints
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarise(record: dict) -> list[str]:
    """Lines saying where each model ran and what it measured."""
    env = record["environment"]
    lines = [
        f"device {env.get('device')} ({env.get('cuda_device', 'no GPU')}), "
        f"ONNX Runtime providers {env.get('onnxruntime_providers')}"
    ]
    for key in ("before", "after"):
        block = record[key]
        for backend, cells in block["latency_ms"].items():
            for cell in cells.values():
                lines.append(
                    f"  {key} {backend} bs{cell['batch_size']} on {cell['device']}"
                    f"{' (' + cell['provider'] + ')' if 'provider' in cell else ''}: "
                    f"median {cell['median_ms']:.3f} ms over {cell['repeats']} runs"
                    f"{' BUSY' if cell.get('busy') else ''}"
                )
        lines.append(
            f"  {key} peak memory {block['peak_memory_bytes'] / 2**20:.1f} MiB "
            f"({block['peak_memory_method']}, bs{block['peak_memory_batch_size']})"
        )
    stages = record["accuracy_stages"]
    lines.append(
        "  accuracy "
        + ", ".join(
            f"{name} {value['accuracy']:.3f}"
            for name, value in stages.items()
            if isinstance(value, dict)
        )
    )
    return lines


def main(folder: str) -> None:
    for path in sorted(Path(folder).rglob("*.json")):
        record = json.loads(path.read_text())
        if "environment" in record and "after" in record:  # a benchmark.json, whatever its name
            print(path)
            print("\n".join(summarise(record)))


if __name__ == "__main__":
    main(sys.argv[1])
