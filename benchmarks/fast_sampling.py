"""The distilled student against its teacher and against the course: seconds per request, one run.

    python -m benchmarks.fast_sampling [--student checkpoints/emoji32_fast] [--teacher checkpoints/emoji32]

Rows, each the median of --repeats timed runs after a warm-up, in fp32 and (where native) bf16:
- the course's ContextUnet (n_feat=64, 16x16, random weights: only its cost matters), 32 unguided
  sprites by DDIM in 25 steps, the course lesson "Speeding up sampling", in NCHW and in channels_last
  (the pipeline's layout), so the course is compared at its faster one;
- the student, 32 guided 32x32 sprites at its default_sampling (one network call per step);
- the student, 16 sprites (the app's request, the live redraw);
- the teacher, 32 and 16 guided sprites at its default_sampling (two branches per step).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from benchmarks.course_unet import CourseContextUnet
from diffusion_core.pipeline import DiffusionPipeline, cpu_has_native_bf16
from diffusion_core.samplers import sample
from diffusion_core.schedule import NoiseSchedule


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def course_request(model, schedule: NoiseSchedule, bf16: bool, memory_format: torch.memory_format):
    """32 unguided 16x16 sprites, DDIM 25 steps, as the course's notebook samples them, in ``memory_format``
    (the pipeline runs channels_last; the course gets both layouts, so it is timed at its best)."""
    model.to(memory_format=memory_format)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            sample(lambda x, t, c: model(x.contiguous(memory_format=memory_format), t, None).float(), schedule,
                   (32, 3, 16, 16), sampler="ddim", steps=25)
    return run


def pipeline_request(pipe: DiffusionPipeline, num_images: int):
    labels = [pipe.labels[i % len(pipe.labels)] for i in range(num_images)]
    return lambda: pipe.generate(num_images=num_images, classes=labels, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="checkpoints/emoji32_fast")
    parser.add_argument("--teacher", default="checkpoints/emoji32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    course = CourseContextUnet(height=16).eval()
    course_schedule = NoiseSchedule("linear", 500)  # the course: T = 500, β from 1e-4 to 0.02
    dtypes = ["float32"] + (["bfloat16"] if cpu_has_native_bf16() else [])
    print(f"device: {platform.machine()} CPU, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"median of {args.repeats}")
    print("| what | images | sampling | dtype | network calls | seconds |")
    print("| --- | ---: | --- | --- | ---: | ---: |")
    for dtype in dtypes:
        for layout, memory_format in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            seconds = median_seconds(course_request(course, course_schedule, dtype == "bfloat16", memory_format), args.repeats)
            print(f"| course ContextUnet, 16x16, unguided, {layout} | 32 | DDIM 25 steps | {dtype} | 25 | {seconds:.2f} |",
                  flush=True)
        for name, folder in (("student", args.student), ("teacher", args.teacher)):
            pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype)
            s = pipe.default_sampling
            branches = 1 if pipe.guidance_distilled else 2
            for num in (32, 16):
                seconds = median_seconds(pipeline_request(pipe, num), args.repeats)
                print(f"| {name} `{folder}`, 32x32, guided | {num} | {s['sampler']} {s['steps']} steps, w {s['guidance']:g} "
                      f"| {dtype} | {s['steps']} x {branches} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
