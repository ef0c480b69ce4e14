"""Training speed of a recipe on this machine, measured inside the real ``train`` loop (data, prompts,
bf16 autocast where native, AdamW, clipping, EMA): training images/s, the GFLOP/s they amount to (3x the
forward's FLOPs per picture), the bf16 and fp32 matmul peaks measured in the same run, the share of the
peak, and the ten most expensive operations of the timed steps.

    python -m benchmarks.training_speed [--config configs/emoji32_text_prompts.json] [--batch 128] [--steps 8]
    python -m benchmarks.training_speed --compare [--pairs 3]   # the old path and the new one, alternating
    python -m benchmarks.training_speed --convs     # each convolution of the network alone: how near the peak

``--convs`` times every distinct convolution of the recipe's U-Net at the batch, in bf16 and channels-last as
training runs it: the forward, the gradient of the input and the gradient of the weights (``aten``'s
``convolution_backward`` for each alone), each as GFLOP/s, and what they add up to in one training step.

``--compare`` runs each path in a fresh process, old then new, ``--pairs`` times (so both see the same load
on shared cores). The old path is the new code with the replaced pieces put back: PyTorch's fused attention
kernel in the U-Net (``unet.attend``) and in the text encoder, GroupNorm on channels-last tensors at 32x32
when training (``unet.GroupNorm``), and the per-parameter EMA loop (``train.ema_update``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusion_core import text as text_module
from diffusion_core import train as train_module
from diffusion_core import unet
from diffusion_core.train import TrainConfig, train
from diffusion_core.unet import UNet, count_flops

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_RECIPE = ROOT / "configs" / "emoji32_text_prompts.json"  # the stage that exports checkpoints/emoji32


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of a size^3 matmul in ``dtype`` (the best of repeated timings)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def use_old_path() -> None:
    """Put back what the training speed-ups replaced (see the module docstring)."""
    def fused_attention(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    @torch.no_grad()
    def ema_loop(ema, model, decay):
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p, 1 - decay)

    def group_norm_before(self, x):  # the contiguous copy only at 16x16 and below, training or not
        small = x.shape[-1] * x.shape[-2] <= 256 and x.dtype == torch.bfloat16 and not x.is_contiguous() \
            and x.is_contiguous(memory_format=torch.channels_last)
        if small:
            return torch.nn.GroupNorm.forward(self, x.contiguous()).contiguous(memory_format=torch.channels_last)
        return torch.nn.GroupNorm.forward(self, x)

    unet.attend = fused_attention
    unet.GroupNorm.forward = group_norm_before
    text_module.sdpa_kernel = lambda *backends: nullcontext()
    train_module.ema_update = ema_loop


def recipe(config: str, batch: int, folder: Path) -> TrainConfig:
    """The recipe from nothing (no init_from) at ``batch``, writing into ``folder``, never stopping on its own."""
    cfg = TrainConfig.from_json(config)
    cfg.init_from, cfg.batch_size = "", batch
    cfg.max_steps, cfg.checkpoint_every, cfg.log_every = 10**6, 10**9, 10**6
    cfg.out_dir, cfg.export_dir = str(folder / "run"), str(folder / "export")
    return cfg


def measure(config: str, batch: int, steps: int, warmup: int = 3, profile: bool = False) -> dict:
    """Train ``warmup + steps`` steps of the recipe and time the last ``steps``; with ``profile``, then
    ``steps`` more under torch.profiler (timed apart: the profiler slows what it watches)."""
    marks: dict = {}
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else None
    last = warmup + steps * (2 if profile else 1)

    def on_step(progress) -> bool:
        if progress.step == warmup:
            marks["start"] = time.perf_counter()
        if progress.step == warmup + steps:
            marks["end"] = time.perf_counter()
            if profiler:
                profiler.start()
        if progress.step == last:
            if profiler:
                profiler.stop()
            marks["flops"] = count_flops(progress.ema)
            return True
        return False

    with tempfile.TemporaryDirectory() as folder:
        train(recipe(config, batch, Path(folder)), show_progress=False, on_step=on_step)
    result = {"images_per_s": steps * batch / (marks["end"] - marks["start"]), "forward_flops": marks["flops"]}
    if profiler:
        events = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        result["top_ops"] = [(e.key, e.self_cpu_time_total / total, e.count // steps) for e in events[:10]]
    return result


def conv_shapes(config: str) -> list[tuple]:
    """(in channels, out channels, kernel, stride, input size, is the first, calls per forward) for each distinct
    convolution of the recipe's U-Net, found by running it once."""
    cfg = TrainConfig.from_json(config)
    model = UNet(**cfg.unet_kwargs(context_dim=4, vocab_size=2 if cfg.text else 0))
    seen: dict = {}

    def note(conv, inputs, output):
        key = (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], inputs[0].shape[-1],
               conv is model.conv_in)
        seen[key] = seen.get(key, 0) + 1

    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(note)
    with torch.no_grad():
        model(torch.zeros(1, 3, cfg.image_size, cfg.image_size), torch.zeros(1, dtype=torch.long))
    return [(*key, calls) for key, calls in seen.items()]


def time_convs(config: str, batch: int, repeats: int = 5) -> list[dict]:
    """Each convolution's forward, input gradient and weight gradient alone (best of ``repeats``), bf16 channels-last."""
    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    rows = []
    for c_in, c_out, k, stride, size, first, calls in conv_shapes(config):
        last = torch.channels_last
        x = torch.randn(batch, c_in, size, size, dtype=torch.bfloat16).contiguous(memory_format=last)
        w = torch.randn(c_out, c_in, k, k, dtype=torch.bfloat16).contiguous(memory_format=last)
        args = ([stride] * 2, [k // 2] * 2, [1, 1], False, [0, 0], 1)
        y = torch.ops.aten.convolution(x, w, None, *args)
        g = torch.randn_like(y).contiguous(memory_format=last)
        flops = 2 * batch * y.shape[-1] * y.shape[-2] * c_in * c_out * k * k
        seconds = {
            "forward": best(lambda: torch.ops.aten.convolution(x, w, None, *args)),
            "input grad": best(lambda: torch.ops.aten.convolution_backward(g, x, w, [c_out], *args, [True, False, False])),
            "weight grad": best(lambda: torch.ops.aten.convolution_backward(g, x, w, [c_out], *args, [False, True, True])),
        }
        if first:
            seconds["input grad"] = 0.0  # the first convolution's input, the noisy picture, needs no gradient
        rows.append(dict(shape=f"{c_in}->{c_out} {k}x{k}/{stride} at {size}x{size}", calls=calls, flops=flops,
                         seconds=seconds))
    return rows


def report_convs(rows: list[dict], peak: float) -> None:
    print(f"{'convolution':28s} {'calls':>5s}  " + "  ".join(f"{p + ' ms, GFLOP/s':>24s}" for p in rows[0]["seconds"]))
    total_time = total_flops = 0.0
    for row in sorted(rows, key=lambda r: -r["calls"] * sum(r["seconds"].values())):
        cells = []
        for part, seconds in row["seconds"].items():
            cells.append(f"{1000 * seconds:9.2f} ms {row['flops'] / seconds / 1e9 if seconds else 0:7.0f}  ")
            total_time += row["calls"] * seconds
            total_flops += row["calls"] * row["flops"] * (seconds > 0)
        print(f"{row['shape']:28s} {row['calls']:5d}  " + "  ".join(f"{c:>24s}" for c in cells))
    print(f"all convolutions of one training step: {1000 * total_time:.0f} ms, {total_flops / total_time / 1e9:.0f} GFLOP/s "
          f"({total_flops / total_time / 1e9 / peak:.0%} of the bf16 matmul peak, {peak:.0f} GFLOP/s)")


def report(result: dict, peaks: dict) -> None:
    gflops = 3 * result["forward_flops"] * result["images_per_s"] / 1e9
    print(f"training images/s        {result['images_per_s']:.1f}")
    print(f"achieved GFLOP/s         {gflops:.0f} ({3 * result['forward_flops'] / 1e9:.2f} GFLOP per training image)")
    print(f"bf16 matmul peak         {peaks['bf16']:.0f} GFLOP/s   (2048^3, same run)")
    print(f"fp32 matmul peak         {peaks['fp32']:.0f} GFLOP/s")
    print(f"share of the bf16 peak   {gflops / peaks['bf16']:.1%}")
    if "top_ops" in result:
        print("ten most expensive operations (self CPU time, calls per step):")
        for name, share, calls in result["top_ops"]:
            print(f"  {share:6.1%}  {calls:5d}  {name[:70]}")


def compare(args) -> None:
    """Old and new path alternating, each in a fresh process."""
    rates: dict = {"old": [], "new": []}
    for _ in range(args.pairs):
        for path in ("old", "new"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.training_speed", "--config", args.config,
                                  "--batch", str(args.batch), "--steps", str(args.steps), "--path", path, "--json"],
                                 cwd=ROOT, capture_output=True, text=True, check=True)
            rates[path].append(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])
    ratios = [n / o for o, n in zip(rates["old"], rates["new"])]
    for path in ("old", "new"):
        print(f"{path} path: " + ", ".join(f"{r:.1f}" for r in rates[path])
              + f" images/s (median {statistics.median(rates[path]):.1f})")
    print(f"new/old, median of {args.pairs} pairs: {statistics.median(ratios):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(SHIPPED_RECIPE))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--compare", action="store_true", help="old and new path in alternating fresh processes")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--path", choices=("old", "new"), default="new")
    parser.add_argument("--json", action="store_true", help="print one JSON line (what --compare reads)")
    parser.add_argument("--convs", action="store_true", help="time each convolution of the network alone")
    args = parser.parse_args()
    if args.convs:
        print(f"{Path(args.config).name}: each convolution at batch {args.batch}, bf16, channels-last, "
              f"{torch.get_num_threads()} threads, best of 5")
        report_convs(time_convs(args.config, args.batch), matmul_peak(torch.bfloat16))
        return
    if args.compare:
        compare(args)
        return
    if args.path == "old":
        use_old_path()
    if args.json:
        print(json.dumps(measure(args.config, args.batch, args.steps)))
        return
    print(f"{Path(args.config).name} from nothing, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.path} path")
    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    result = measure(args.config, args.batch, args.steps, profile=True)
    peaks["bf16"] = max(peaks["bf16"], matmul_peak(torch.bfloat16))  # before and after: the better of two looks
    report(result, peaks)


if __name__ == "__main__":
    main()
