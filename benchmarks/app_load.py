"""The app under a class of students: N people press Generate on the Context tab at once, with and
without a training running in the Train tab.

    python -m benchmarks.app_load [--users 1 10 30 50] [--model checkpoints/emoji32] [--no-training]
                                  [--batching] [--dtype auto|float32|bfloat16] [--out FILE.md]

Starts `python app.py` on the loopback (offline), then for each N submits N default requests (16
images at the checkpoint's default_sampling, each with its own seed and its own client) at the same
moment, and prints a markdown table: served, how many the fast model answered (the app does so when
the line is deep, ui/context.py), throughput, p50/p95/max latency (submit to pictures). Then the same
while a training of the Train tab runs (its default data and model, long enough to outlast the rounds;
stopped afterwards). ``--batching`` also measures whether batching requests together would pay: the
network's image-steps/s at the batch sizes of 1, 2 and 4 default requests (guided: twice the images).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

from diffusion_core.pipeline import DiffusionPipeline


def start_app(model: str, extra_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "app.py", "--model", model, "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(180):
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("the app did not start within 180 s")


def cpu_name() -> str:
    """The CPU's model name and whether it has native bf16 (AMX or AVX-512 BF16), from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    kind = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else \
        "AVX-512, no bf16" if "avx512f" in flags else "AVX2 only" if "avx2" in flags else "no AVX2"
    return f"{name} ({kind})"


def context_request(labels: list[str], sampling: dict, seed: int) -> list:
    weights = [float(i == 0) for i in range(len(labels))]
    return [*weights, "any", sampling["guidance"], sampling["sampler"], sampling["steps"], 16, seed, "full"]


def fetch_pictures(http, gallery: list) -> int:
    """Fetch a result's pictures as a browser does (one keep-alive connection per user); returns how many."""
    for item in gallery:
        http.get(item["image"]["url"], timeout=60).raise_for_status()
    return len(gallery)


def load_round(url: str, users: int, request) -> dict:
    """``users`` requests submitted at once, each from its own client; a request's latency runs from its submit
    to its last picture fetched (the pictures are fetched as a browser does, not by gradio_client's one-by-one
    downloads into temporary files, whose CPU on this machine would be the clients', not the server's)."""
    import httpx
    from gradio_client import Client

    clients = [Client(url, verbose=False, download_files=False) for _ in range(users)]
    https = [httpx.Client() for _ in range(users)]
    start = time.perf_counter()
    jobs = [(client.submit(*request(seed), api_name="/generate_context"), time.perf_counter())
            for seed, client in enumerate(clients)]
    done_at: dict[int, float] = {}  # each request's own finish (reading results in order would credit later ones late)
    fetched: dict[int, int] = {}

    def finish(future, i):
        try:
            fetched[i] = fetch_pictures(https[i], future.result()[0])
        finally:
            done_at.setdefault(i, time.perf_counter())

    for i, (job, _) in enumerate(jobs):
        job.future.add_done_callback(lambda f, i=i: finish(f, i))
    latencies, served, fast = [], 0, 0
    for i, (job, submitted) in enumerate(jobs):
        gallery, info = job.result(timeout=3600)
        while i not in done_at:
            time.sleep(0.01)
        latencies.append(done_at[i] - submitted)
        served += fetched.get(i) == 16
        fast += "fast model" in info
    wall = time.perf_counter() - start
    for http in https:
        http.close()
    return {"users": users, "served": served, "fast": fast, "wall_s": wall, "requests_per_min": 60 * users / wall,
            "images_per_s": 16 * users / wall, "p50_s": statistics.median(latencies),
            "p95_s": float(np.percentile(latencies, 95)), "max_s": max(latencies)}


def batching_rates(model: str, sampling: dict) -> dict[int, float]:
    """Image-steps/s of guided sampling at the batch of 1, 2 and 4 default requests."""
    pipe = DiffusionPipeline.from_pretrained(model, dtype="auto")
    rates = {}
    for requests in (1, 2, 4):
        n = 16 * requests
        pipe.generate(num_images=n, classes=[pipe.labels[0]], sampler=sampling["sampler"], steps=2, seed=0)
        start = time.perf_counter()
        pipe.generate(num_images=n, classes=[pipe.labels[0]], sampler=sampling["sampler"], steps=10, seed=0)
        rates[requests] = n * 10 / (time.perf_counter() - start)
    return rates


def start_training(url: str):
    """A Train-tab training (default data and model, up to 20,000 steps or the server's cap), once its first
    step is in; returns its client and job."""
    from gradio_client import Client

    trainer = Client(url, verbose=False)
    job = trainer.submit("emoji sprites", ["face", "flag"], ["noto", "openmoji", "twemoji", "fluent", "emojione"],
                         "16", None, "small", 20000, float(os.environ.get("TRAIN_MAX_MINUTES", "30")), 50, 0,
                         api_name="/train")
    deadline = time.time() + 300
    while not any("Step **" in str(update[0]) for update in job.outputs() if update):
        if time.time() > deadline or job.done():
            raise RuntimeError(f"the training did not start: {job.status()}")
        time.sleep(0.5)
    return trainer, job


def table(rows: list[dict]) -> list[str]:
    lines = ["| users at once | served | by the fast model | wall (s) | requests/min | images/s | p50 latency (s) | "
             "p95 latency (s) | max (s) |", "|---|---|---|---|---|---|---|---|---|"]
    return lines + [f"| {r['users']} | {r['served']}/{r['users']} | {r['fast']} | {r['wall_s']:.1f} | "
                    f"{r['requests_per_min']:.1f} | {r['images_per_s']:.2f} | {r['p50_s']:.1f} | {r['p95_s']:.1f} | "
                    f"{r['max_s']:.1f} |" for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="checkpoints/emoji32")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 10, 30, 50])
    parser.add_argument("--no-training", action="store_true", help="skip the rounds with a training running")
    parser.add_argument("--batching", action="store_true", help="also measure batched sampling rates")
    parser.add_argument("--dtype", default="auto", help="the app's precision (APP_DTYPE): auto, float32 or bfloat16")
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    config = json.loads((Path(args.model) / "config.json").read_text())
    sampling = config["default_sampling"]
    rates = batching_rates(args.model, sampling) if args.batching else {}
    proc, url = start_app(args.model, {"TRAIN_MAX_MINUTES": os.environ.get("TRAIN_MAX_MINUTES", "30"),
                                       "APP_DTYPE": args.dtype})
    request = lambda seed: context_request(config["labels"], sampling, seed)  # noqa: E731
    try:
        rows = [load_round(url, users, request) for users in args.users]
        training_rows = []
        if not args.no_training:
            trainer, job = start_training(url)
            training_rows = [load_round(url, users, request) for users in args.users]
            trainer.predict(api_name="/train_stop")
            summary = job.result(timeout=600)[0].split("\n")[0]
    finally:
        proc.terminate()
    lines = [f"App under load: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.model}, "
             f"APP_DTYPE={args.dtype}; each user asks for 16 images at {sampling['sampler']}, "
             f"{sampling['steps']} steps, guidance {sampling['guidance']:g} (Context tab defaults, full model; the app "
             "answers with the fast model when the line is deep).", "", *table(rows)]
    if training_rows:
        lines += ["", "The same while a Train-tab training runs (face and flag at 16 px, the small preset; its steps "
                  f"interleave with the requests on the one torch thread). The training afterwards: {summary}", "",
                  *table(training_rows)]
    if rates:
        lines += ["", "Batching requests together (one network call for several requests), guided image-steps/s: "
                  + ", ".join(f"{k} request{'s' if k > 1 else ''} ({32 * k} images per call): {v:.1f}" for k, v in rates.items())]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
