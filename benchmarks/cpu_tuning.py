"""Three CPU tunings of sampling, each timed on the app's default request (16 images of one class at
the checkpoint's default_sampling) in pairs, old then new, so both see the same load on shared cores:
- fp32: NCHW (contiguous) vs channels_last (what the pipeline uses);
- bf16: channels_last with PyTorch's own GroupNorm vs with ``unet.GroupNorm``, which normalises a
  contiguous copy of inputs of 16x16 and below;
- bf16: autocast entered at every network call (the weights cast to bf16 each time) vs once around
  the request's sampling loop, as ``generate`` does (the casts cached until it ends);
then the GroupNorm kernels alone, per shape the U-Net feeds them (bf16, batch 32).

    python benchmarks/cpu_tuning.py [--model checkpoints/emoji32] [--pairs 6]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusion_core import unet  # noqa: E402
from diffusion_core.pipeline import DiffusionPipeline, cpu_has_native_bf16  # noqa: E402
from diffusion_core.samplers import sample  # noqa: E402


@contextmanager
def layout(pipe: DiffusionPipeline, memory_format: torch.memory_format, group_norm_workaround: bool = True):
    """Run ``pipe`` in ``memory_format``, with or without unet.GroupNorm's small-input workaround."""
    saved_format, saved_forward = pipe.memory_format, unet.GroupNorm.forward
    pipe.memory_format = memory_format
    pipe.model.to(memory_format=memory_format)
    if not group_norm_workaround:
        unet.GroupNorm.forward = torch.nn.GroupNorm.forward
    try:
        yield
    finally:
        pipe.memory_format, unet.GroupNorm.forward = saved_format, saved_forward
        pipe.model.to(memory_format=saved_format)


def request(pipe: DiffusionPipeline, autocast_scope=nullcontext):
    """The app's default request as ``generate`` samples it, with ``autocast_scope()`` around the loop."""
    context, _, _ = pipe.context_for(16, classes=["food_drink"])
    s = pipe.default_sampling
    size = pipe.model.image_size

    def run(seed: int) -> float:
        start = time.perf_counter()
        with autocast_scope():
            sample(pipe.denoise, pipe.schedule, (16, pipe.model.in_channels, size, size), sampler=s["sampler"],
                   steps=s["steps"], guidance=s["guidance"], context=context, prediction_type=pipe.prediction_type,
                   seed=seed, clip_x0=True, device=pipe.device)
        return time.perf_counter() - start
    return run


def paired(old, new, pairs: int) -> str:
    """Median seconds of ``old(seed)`` and ``new(seed)`` run alternately, and the median of their ratios."""
    times = {"old": [], "new": []}
    for i in range(pairs + 1):
        for name, run in (("old", old), ("new", new)):
            seconds = run(i)
            if i:  # the first pair warms up
                times[name].append(seconds)
    ratio = statistics.median(n / o for n, o in zip(times["new"], times["old"]))
    return (f"old median {statistics.median(times['old']):.2f} s (best {min(times['old']):.2f}), "
            f"new median {statistics.median(times['new']):.2f} s (best {min(times['new']):.2f}), "
            f"new/old median of pairs {ratio:.3f}")


def in_layout(pipe, run, **setting):
    def timed(seed: int) -> float:
        with layout(pipe, **setting):
            return run(seed)
    return timed


def group_norm_rows(repeats: int = 20) -> None:
    for channels, size in [(48, 32), (144, 32), (96, 16), (144, 16), (192, 16), (96, 8), (192, 8), (192, 4)]:
        x = torch.randn(32, channels, size, size, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        norm = torch.nn.GroupNorm(16, channels).to(torch.bfloat16)
        runs = {"channels_last": lambda: norm(x),
                "contiguous copy": lambda: F.group_norm(x.contiguous(), 16, norm.weight, norm.bias).contiguous(
                    memory_format=torch.channels_last)}
        times = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        print(f"  group norm bf16 (32, {channels}, {size}, {size}): "
              + ", ".join(f"{name} {statistics.median(t) * 1e3:.2f} ms" for name, t in times.items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="checkpoints/emoji32")
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, native bf16: {cpu_has_native_bf16()}")
    pipe = DiffusionPipeline.from_pretrained(args.model, dtype="float32")
    run = request(pipe)
    print("fp32, NCHW (old) vs channels_last (new):",
          paired(in_layout(pipe, run, memory_format=torch.contiguous_format),
                 in_layout(pipe, run, memory_format=torch.channels_last), args.pairs))
    if cpu_has_native_bf16():
        pipe.set_dtype("bfloat16")
        print("bf16 channels_last, torch's GroupNorm (old) vs unet.GroupNorm (new):",
              paired(in_layout(pipe, run, memory_format=torch.channels_last, group_norm_workaround=False),
                     in_layout(pipe, run, memory_format=torch.channels_last), args.pairs))
        once = request(pipe, pipe.autocast)
        print("bf16, autocast per network call (old) vs once per request (new):", paired(run, once, args.pairs))
        group_norm_rows()


if __name__ == "__main__":
    main()
