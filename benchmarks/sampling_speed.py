"""Sampling speed of the default 32x32 U-Net on this machine.

    python -m benchmarks.sampling_speed [--model checkpoints/emoji32] [--student checkpoints/emoji32_fast]
                                        [--batch 16] [--repeats 2]

Prints a markdown table: images/s for each sampler at 10/25/50 steps, with and without guidance,
in fp32 and (where the CPU or GPU has it natively) bf16; the share of sampling time spent outside
the network; and the network's achieved GFLOP/s against this machine's fp32 matmul peak, measured
in the same run. Weights do not change the speed, so an untrained U-Net is used when --model is absent.
With --student, rows for a distilled student (guidance as an input: one network call per step) with
its own sampler: a consistency student at 1, 2, 4 and 8 steps, a progressive (DDIM) one at its steps.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from diffusion_core.pipeline import DiffusionPipeline, cpu_has_native_bf16
from diffusion_core.samplers import SAMPLERS
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.unet import UNet, count_flops
from benchmarks.course_unet import CourseContextUnet


def count_flops_of(model) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long), None)
    return counter.get_total_flops()


def matmul_peak_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GEMM rate over a few runs: the machine's practical fp32 peak."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def forward_rate(model, device: torch.device, batch: int = 32, repeats: int = 5) -> float:
    """Best network forwards per second (images/s) at a batch of ``batch`` 32x32 images, fp32."""
    model = model.eval().to(device)
    x, t = torch.randn(batch, 3, 32, 32, device=device), torch.zeros(batch, dtype=torch.long, device=device)
    best = 0.0
    with torch.no_grad():
        model(x, t, None)
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x, t, None)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, batch / (time.perf_counter() - start))
    return best


def timed_generate(pipe: DiffusionPipeline, batch: int, sampler: str, steps: int, guidance: float, repeats: int):
    """(images/s, seconds inside the network, total seconds, network calls) of the fastest repeat."""
    inner = pipe.denoise
    best = None
    for _ in range(repeats):
        stats = {"net": 0.0, "calls": 0, "images": 0}

        def timed(x, t, c, *guidance):
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = inner(x, t, c, *guidance)
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
            stats["net"] += time.perf_counter() - start
            stats["calls"] += 1
            stats["images"] += x.shape[0]
            return out

        pipe.denoise = timed
        classes = list(pipe.labels) if guidance > 0 else None
        out = pipe.generate(num_images=batch, classes=classes, sampler=sampler, steps=steps,
                            guidance=guidance if classes else 1.0, seed=0)
        pipe.denoise = inner
        run = (batch / out.seconds, stats["net"], out.seconds, stats["images"])
        best = run if best is None or run[0] > best[0] else best
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: untrained default U-Net)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--student", default=None, help="distilled student checkpoint: rows at 1, 2, 4, 8 steps")
    args = parser.parse_args()

    if args.model:
        pipe = DiffusionPipeline.from_pretrained(args.model)
    else:
        labels = ["face", "people", "animal_nature", "food_drink", "travel_places", "activity_object", "symbol", "flag"]
        pipe = DiffusionPipeline(UNet(), NoiseSchedule("cosine", 1000), labels, ["noto", "openmoji"])
    device = pipe.device
    flops = count_flops(pipe.model.cpu()) / 1e9
    pipe.model.to(device)
    peak = matmul_peak_gflops(device)
    native_bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    dtypes = ["float32"] + (["bfloat16"] if native_bf16 else [])
    hw = torch.cuda.get_device_name(0) if device.type == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {hw}; torch {torch.__version__}; batch {args.batch}")
    print(f"U-Net: {flops:.3f} GFLOP per image per forward; fp32 matmul peak measured: {peak:.0f} GFLOP/s")
    course = CourseContextUnet()
    course_flops = count_flops_of(course) / 1e9
    ours_rate, course_rate = forward_rate(UNet(), device), forward_rate(course, device)
    print(f"fp32 forward, batch 32: our U-Net {ours_rate:.0f} images/s ({flops:.2f} GFLOP); the course's ContextUnet "
          f"at 32x32 {course_rate:.0f} images/s ({course_flops:.2f} GFLOP)\n")
    print("| sampler | steps | guidance | dtype | images/s | outside network | network GFLOP/s | % of fp32 peak |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for dtype in dtypes:
        pipe.set_dtype(dtype)
        for sampler in (s for s in SAMPLERS if s != "consistency"):  # the students' sampler: rows below
            for steps in args.steps:
                for guidance in (0.0, 3.0):
                    ips, net, total, images = timed_generate(pipe, args.batch, sampler, steps, guidance, args.repeats)
                    gflops = flops * images / net
                    print(f"| {sampler} | {steps} | {'3 (2 branches)' if guidance else 'none'} | {dtype} | {ips:.1f} "
                          f"| {100 * (1 - net / total):.1f}% | {gflops:.0f} | {100 * gflops / peak:.0f}% |", flush=True)
        if args.student:
            student = DiffusionPipeline.from_pretrained(args.student, dtype=dtype)
            student_flops = count_flops(student.model.cpu()) / 1e9
            student.model.to(device)
            own = student.default_sampling["sampler"]
            for steps in (1, 2, 4, 8) if own == "consistency" else (student.default_sampling["steps"],):
                ips, net, total, images = timed_generate(student, args.batch, own, steps, 3.0, args.repeats)
                gflops = student_flops * images / net
                print(f"| student {own} | {steps} | 3 (w as input, 1 branch) | {student.dtype} | {ips:.1f} "
                      f"| {100 * (1 - net / total):.1f}% | {gflops:.0f} | {100 * gflops / peak:.0f}% |", flush=True)


if __name__ == "__main__":
    main()

