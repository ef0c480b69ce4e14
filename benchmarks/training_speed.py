"""Training throughput (images/s) of a training configuration (default: emoji32) on this machine,
fp32 and bf16 autocast (where native), measured over a few optimizer steps after a warm-up.

    python benchmarks/training_speed.py [--config configs/emoji32.json] [--steps 20] [--batch 64]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusion_core.pipeline import cpu_has_native_bf16  # noqa: E402
from diffusion_core.schedule import NoiseSchedule  # noqa: E402
from diffusion_core.train import TrainConfig, diffusion_loss  # noqa: E402
from diffusion_core.unet import UNet  # noqa: E402


def images_per_second(cfg: TrainConfig, bf16: bool, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = UNet(**cfg.unet_kwargs(10)).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    schedule = NoiseSchedule(cfg.schedule, cfg.num_timesteps)
    x0 = torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    ctx = torch.zeros(cfg.batch_size, 10, device=device)

    def step():
        t = torch.randint(cfg.num_timesteps, (cfg.batch_size,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, schedule, x0, ctx, t, torch.randn_like(x0), cfg.prediction_type)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "emoji32.json"))
    args = parser.parse_args()
    cfg = TrainConfig.from_json(args.config)
    cfg.batch_size = args.batch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    for bf16 in [False] + ([True] if native else []):
        ips = images_per_second(cfg, bf16, args.steps, device)
        print(f"{Path(args.config).stem}, {device}, batch {args.batch}, {'bf16 autocast' if bf16 else 'fp32'}: "
              f"{ips:.0f} training images/s")


if __name__ == "__main__":
    main()
