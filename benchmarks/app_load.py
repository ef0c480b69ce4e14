"""The app under a class of students: N people press Generate on the Context tab at once.

    python -m benchmarks.app_load [--users 1 10 50] [--model checkpoints/emoji32] [--out FILE.md]

Starts `python app.py` on the loopback (offline), then for each N submits N default requests (16
images at the checkpoint's default_sampling, each with its own seed and its own client) at the same
moment, and prints a markdown table: served, throughput, p50/p95/max latency (submit to pictures).
Also measures whether batching requests together would pay: the network's image-steps/s at the
batch sizes of 1, 2 and 4 default requests (guided: twice the images).
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


def start_app(model: str) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
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


def context_request(labels: list[str], sampling: dict, seed: int) -> list:
    weights = [float(i == 0) for i in range(len(labels))]
    return [*weights, "any", sampling["guidance"], sampling["sampler"], sampling["steps"], 16, seed]


def load_round(url: str, users: int, request) -> dict:
    from gradio_client import Client

    clients = [Client(url, verbose=False) for _ in range(users)]
    start = time.perf_counter()
    jobs = [(client.submit(*request(seed), api_name="/generate_context"), time.perf_counter())
            for seed, client in enumerate(clients)]
    latencies, served = [], 0
    for job, submitted in jobs:
        gallery, _ = job.result(timeout=3600)
        latencies.append(time.perf_counter() - submitted)
        served += len(gallery) == 16
    wall = time.perf_counter() - start
    return {"users": users, "served": served, "wall_s": wall, "requests_per_min": 60 * users / wall,
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="checkpoints/emoji32")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    config = json.loads((Path(args.model) / "config.json").read_text())
    sampling = config["default_sampling"]
    rates = batching_rates(args.model, sampling)
    proc, url = start_app(args.model)
    try:
        rows = [load_round(url, users, lambda seed: context_request(config["labels"], sampling, seed))
                for users in args.users]
    finally:
        proc.terminate()
    lines = [f"App under load: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, {args.model}; each user asks for 16 images at {sampling['sampler']}, "
             f"{sampling['steps']} steps, guidance {sampling['guidance']:g} (Context tab defaults).", "",
             "| users at once | served | wall (s) | requests/min | images/s | p50 latency (s) | p95 latency (s) | max (s) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['users']} | {r['served']}/{r['users']} | {r['wall_s']:.1f} | {r['requests_per_min']:.1f} | "
              f"{r['images_per_s']:.2f} | {r['p50_s']:.1f} | {r['p95_s']:.1f} | {r['max_s']:.1f} |" for r in rows]
    lines += ["", "Batching requests together (one network call for several requests), guided image-steps/s: "
              + ", ".join(f"{k} request{'s' if k > 1 else ''} ({32 * k} images per call): {v:.1f}" for k, v in rates.items())]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
