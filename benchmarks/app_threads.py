"""Why the app sampled slower than the library: torch on two Python threads means two OpenMP teams.

    python -m benchmarks.app_threads [--model checkpoints/emoji32] [--repeats 3] [--cases main second ...]

Times the Context tab's default request (16 images, the checkpoint's default_sampling, class 0) in a
fresh process per case:
  main           the main thread only (the library as a script calls it);
  second         the main thread runs torch first, then a second Python thread samples (Gradio's worker
                 threads did this: the app loaded its models on the main thread);
  second+passive the same with OMP_WAIT_POLICY=PASSIVE (every idle OpenMP thread sleeps at once);
  main+passive   the main thread only, OMP_WAIT_POLICY=PASSIVE;
  worker         the app's fix: every torch call on one dedicated thread (ui.scheduler), the main thread none.
Each case also reports the OpenMP threads the process holds (libgomp keeps one team per Python thread
that ran a parallel region). libgomp spins idle threads only while it manages no more threads than there
are CPUs; past that it sleeps them almost at once (its "throttled" spin count), and each parallel region
then pays the wake-ups. If "second" is slow for that reason, "main+passive" (sleep always, one team) is as
slow as "second", and "worker" is as fast as "main".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {"main": {}, "second": {}, "main+passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "worker": {},
         "second+passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def one_case(case: str, model: str, repeats: int) -> dict:
    """Runs in the child process: load, warm up, time ``repeats`` default requests."""
    from diffusion_core.pipeline import DiffusionPipeline

    def load_and_time() -> list[float]:
        pipe = DiffusionPipeline.from_pretrained(model, dtype="auto")
        request = dict(num_images=16, classes=[pipe.labels[0]], seed=0)
        pipe.generate(**request)  # warm-up
        return [pipe.generate(**request).seconds for _ in range(repeats)]

    before = os_threads()
    if case.startswith("second"):
        import torch

        (torch.ones(1 << 22) * 2).sum(), torch.ones(256, 256) @ torch.ones(256, 256)  # the main thread's OpenMP team
        result = {}
        thread = threading.Thread(target=lambda: result.update(times=load_and_time()))
        thread.start()
        thread.join()
        times = result["times"]
    elif case == "worker":
        from ui.scheduler import Scheduler, Work

        times = Scheduler().run(Work("load"), load_and_time)
    else:
        times = load_and_time()
    return {"case": case, "times": times, "extra_threads": os_threads() - before}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="checkpoints/emoji32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case, args.model, args.repeats)))
        return
    import torch

    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.model}, the default request "
          f"(16 images, default_sampling), {args.repeats} timed after a warm-up, a fresh process per case\n")
    print("| case | OMP_WAIT_POLICY | seconds per request (each) | median | threads started |\n|---|---|---|---|---|")
    for case in args.cases:
        env = CASES[case]
        out = subprocess.run([sys.executable, __file__, "--case", case, "--model", args.model, "--repeats",
                              str(args.repeats)], env={**os.environ, **env}, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {case} | {env.get('OMP_WAIT_POLICY', 'default')} | {', '.join(f'{t:.2f}' for t in row['times'])} | "
              f"{statistics.median(row['times']):.2f} | {row['extra_threads']} |", flush=True)


if __name__ == "__main__":
    main()
