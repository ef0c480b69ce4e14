"""The Export tab's default (every class, 2 pictures each, the checkpoint's default sampling): drawn class by
class, one request per class (as exports were drawn before), against the classes sharing requests
(``export.export_batches``). Paired: the two alternate in one run, ``--repeats`` times each.

    python -m benchmarks.export_speed [--model checkpoints/emoji32] [--per-class 2] [--repeats 3]
                                      [--dtype auto|float32|bfloat16]

A request's network calls run on 16-row chunks (pipeline.NETWORK_ROWS), so a request of 2 guided pictures
(4 rows) costs as much per step as one of 8. Prints each run's seconds, the medians and the CPU.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.app_load import cpu_name
from diffusion_core.export import export_dataset
from diffusion_core.pipeline import DiffusionPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="checkpoints/emoji32")
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    args = parser.parse_args()
    pipe = DiffusionPipeline.from_pretrained(args.model, dtype=args.dtype)
    out = Path(tempfile.mkdtemp(prefix="export_speed_"))

    def class_by_class() -> float:
        start = time.perf_counter()
        for name in pipe.labels:
            export_dataset(pipe, out / "one.zip", classes=[name], per_label=args.per_class, batch_size=16)
        return time.perf_counter() - start

    def together() -> float:
        start = time.perf_counter()
        export_dataset(pipe, out / "all.zip", classes=pipe.labels, per_label=args.per_class, batch_size=16)
        return time.perf_counter() - start

    together()  # warm-up (first-call allocations)
    times = {"class by class": [], "together": []}
    for _ in range(args.repeats):
        times["class by class"].append(class_by_class())
        times["together"].append(together())
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, {pipe.dtype}: {len(pipe.labels)} classes x "
          f"{args.per_class} pictures, {pipe.default_sampling}")
    for name, seconds in times.items():
        print(f"{name}: median {statistics.median(seconds):.1f} s ({', '.join(f'{s:.1f}' for s in seconds)})")


if __name__ == "__main__":
    main()
