"""Quality measures on the project's own domain, since Inception features do not fit 32x32 sprites:

- a small CNN classifier trained on the emoji sprites gives class accuracy of conditional samples,
- the Fréchet distance between Gaussians fitted to its penultimate features (Heusel et al. 2017,
  eq. in sec. 3: FD = |μ1-μ2|² + Tr(Σ1 + Σ2 - 2(Σ1Σ2)^½)), the way MNIST papers compute "FID"
  with a domain classifier,
- the share of samples that nearly copy a training image (nearest neighbour in pixel space).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .data import ASSETS, EMOJI_CLASSES, load_emoji

CLASSIFIER_PATH = ASSETS / "classifier.safetensors"
COPY_RMSE = 0.05  # a sample within this pixel RMSE (0..1 scale) of a training image counts as a copy


class SpriteClassifier(nn.Module):
    """Three conv stages (32 -> 16 -> 8 -> 4 px) and a 128-d feature layer before the class logits."""

    def __init__(self, num_classes: int = len(EMOJI_CLASSES), width: int = 64, feature_dim: int = 128):
        super().__init__()
        def stage(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                                 nn.MaxPool2d(2))
        self.body = nn.Sequential(stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(4 * width, feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_classifier(out_path: str | os.PathLike | None = None, epochs: int = 60, seed: int = 0,
                     width: int = 64, batch_size: int = 128, log=print) -> dict:
    """Train on the emoji train split (random flips and shifts), report held-out accuracy, save
    weights + metadata to a .safetensors file atomically."""
    out_path = Path(out_path or CLASSIFIER_PATH)
    torch.manual_seed(seed)
    train_data, held = load_emoji(split="train"), load_emoji(split="held_out")
    x, y = to_input(train_data.images), torch.from_numpy(train_data.labels)
    model = SpriteClassifier(width=width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            xb, yb = augment(x[perm[i:i + batch_size]], g), y[perm[i:i + batch_size]]
            loss = F.cross_entropy(model(xb), yb, label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        if (epoch + 1) % 5 == 0 or epoch == epochs - 1:
            acc = accuracy(model, held.images, held.labels)
            log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out accuracy {acc:.3f}")
    result = {"held_out_accuracy": accuracy(model, held.images, held.labels), "epochs": epochs, "seed": seed,
              "width": width, "classes": list(EMOJI_CLASSES)}
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"info": json.dumps(result)})
    os.replace(tmp, out_path)
    log(f"wrote {out_path}: held-out accuracy {result['held_out_accuracy']:.3f}")
    return result


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 px (with white padding)."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    x = F.pad(x, (2, 2, 2, 2), value=1.0)
    return x[:, :, 2 + dy:2 + dy + x.shape[2] - 4, 2 + dx:2 + dx + x.shape[3] - 4]


def load_classifier(path: str | os.PathLike | None = None) -> tuple[SpriteClassifier, dict]:
    path = Path(path or CLASSIFIER_PATH)
    if not path.exists():
        raise ValueError(f"no classifier at {path}; train it with `python -m diffusion_core train-classifier`")
    with safe_open(str(path), "pt") as f:
        info = json.loads(f.metadata()["info"])
    model = SpriteClassifier(num_classes=len(info["classes"]), width=info.get("width", 32))  # 32: files before widths were saved
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), info


@torch.no_grad()
def predict(model: SpriteClassifier, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(class predictions, features) for uint8 (N, 32, 32, 3) images."""
    model.eval()
    preds, feats = [], []
    for i in range(0, len(images), batch_size):
        f = model.features(to_input(images[i:i + batch_size]))
        feats.append(f.numpy())
        preds.append(model.head(f).argmax(1).numpy())
    return np.concatenate(preds), np.concatenate(feats).astype(np.float64)


def accuracy(model, images, labels) -> float:
    return float((predict(model, images)[0] == np.asarray(labels)).mean())


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD between Gaussians fitted to two feature sets: |μa-μb|² + Tr(Σa) + Tr(Σb) - 2 Tr((Σa^½ Σb Σa^½)^½)."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    vals, vecs = np.linalg.eigh(cov_a)
    sqrt_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def nearest_rmse(images: np.ndarray, reference: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Pixel RMSE (0..1 scale) from each image to its nearest reference image."""
    ref = torch.from_numpy(reference.reshape(len(reference), -1)).float() / 255
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size].reshape(-1, ref.shape[1])).float() / 255
        out.append(torch.cdist(x, ref).min(1).values.numpy() / np.sqrt(ref.shape[1]))
    return np.concatenate(out)


def copy_share(images: np.ndarray, training_images: np.ndarray, threshold: float = COPY_RMSE) -> float:
    """The share of images whose nearest training image is within ``threshold`` pixel RMSE."""
    return float((nearest_rmse(images, training_images) < threshold).mean())
