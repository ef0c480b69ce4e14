"""Time the app's default request: 16 guided 32x32 images at the checkpoint's default_sampling (the
Context tab's defaults), in fp32 and with the precision the app picks ("auto"); ``--dtypes`` adds
forced bf16, which shows what emulated bf16 costs on a CPU without the instructions.

    python -m benchmarks.app_default [--model checkpoints/emoji32] [--repeats 5] [--dtypes float32 bfloat16 auto]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from diffusion_core.pipeline import DiffusionPipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="checkpoints/emoji32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "auto"], choices=["float32", "bfloat16", "auto"])
    args = parser.parse_args()
    for dtype in args.dtypes:
        pipe = DiffusionPipeline.from_pretrained(args.model, dtype=dtype)
        request = dict(num_images=16, classes=["food_drink"])  # generate fills in default_sampling, as the app's sliders do
        sampling = pipe.default_sampling
        pipe.generate(**request)  # warm-up
        times = [pipe.generate(**request, seed=i).seconds for i in range(args.repeats)]
        print(f"{pipe.device} ({torch.get_num_threads()} threads), dtype {dtype} -> {pipe.dtype}: 16 guided images, "
              f"{sampling['sampler']} {sampling['steps']} steps, guidance {sampling['guidance']:g}: median {statistics.median(times):.2f} s, best {min(times):.2f} s")


if __name__ == "__main__":
    main()
