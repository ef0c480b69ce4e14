"""Quality measures in the features of a network that generalises to emoji it never saw.

Inception features do not fit 32x32 sprites, so the features come from a small CNN classifier of
our own, trained the way a feature network must be to judge fairly (Heusel et al. 2017 use a
network trained on other images than the ones compared):

- three roles for real images, all split by emoji, never by picture: the classifier trains on 70% of
  the training split's emoji (``feature_train``), the other 30% (``reference``) are what samples are
  compared with, and the held-out split (emoji the diffusion model never saw) gives the floor: the
  value real, unseen images reach against the same reference. The classifier's epoch is chosen by
  its accuracy on held-out emoji.
- FD: Fréchet distance of Gaussians fitted to the features (Heusel et al. 2017, sec. 3).
- KID: unbiased squared MMD with the kernel k(x, y) = (x·y / d + 1)^3 (Binkowski et al. 2018, eq. 5);
  unbiased, so small sample counts compare.
- precision and recall: k-NN manifolds (Kynkaanniemi et al. 2019, eq. 1-3): precision is the share
  of samples inside the real manifold (fidelity), recall the share of real images inside the
  samples' manifold (variety).
- class accuracy of the classifier, and copies: samples within a pixel RMSE of a training image.
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

from .data import ASSETS, EMOJI_CLASSES, SpriteData, load_emoji

CLASSIFIER_PATH = ASSETS / "classifier.safetensors"
COPY_RMSE = 0.05        # a sample within this pixel RMSE (0..1 scale) of a training image counts as a copy
REFERENCE_FRACTION = 0.3  # of each class's training emoji: the reference, never seen by the classifier
SPLIT_SEED = 1            # which emoji are the reference (the shipped classifier's; another seed, another split)
NEIGHBOURS = 3          # k of the k-NN manifolds (Kynkaanniemi et al. 2019 use k = 3)
MIN_IMAGES = 8


# ---------------------------------------------------------------------------------------------
# Roles of the real images
# ---------------------------------------------------------------------------------------------
def reference_mask(names: np.ndarray, labels: np.ndarray, fraction: float = REFERENCE_FRACTION,
                   seed: int = SPLIT_SEED) -> np.ndarray:
    """True for the sprites of ``fraction`` of each class's emoji (by name, all styles together)."""
    rng = np.random.default_rng(seed)
    chosen = set()
    for c in np.unique(labels):
        emoji = sorted(set(names[labels == c].tolist()))
        chosen.update(rng.choice(emoji, size=max(1, round(fraction * len(emoji))), replace=False).tolist())
    return np.isin(names, list(chosen))


def real_roles(data_train: SpriteData, split_seed: int = SPLIT_SEED) -> tuple[SpriteData, SpriteData]:
    """The training split as (feature_train, reference): disjoint in emoji, chosen by ``split_seed`` (a
    classifier is only fair against the reference of its own split: ``load_classifier``'s info says which)."""
    ref = reference_mask(data_train.names, data_train.labels, seed=split_seed)
    return data_train.subset(~ref), data_train.subset(ref)


# ---------------------------------------------------------------------------------------------
# The feature network
# ---------------------------------------------------------------------------------------------
class SpriteClassifier(nn.Module):
    """Three conv stages (32 -> 16 -> 8 -> 4 px) and a 128-d feature layer before the class logits."""

    def __init__(self, num_classes: int = len(EMOJI_CLASSES), width: int = 48, feature_dim: int = 128):
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


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips, shifts of up to 3 px (white padding) and small brightness/contrast
    changes, so features describe shapes and colours rather than memorised pixels."""
    n = len(x)
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-3, 4, (2,), generator=g))
    size = x.shape[-1]
    x = F.pad(x, (3, 3, 3, 3), value=1.0)[:, :, 3 + dy:3 + dy + size, 3 + dx:3 + dx + size]
    contrast = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    brightness = 0.1 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    return (x * contrast + brightness).clamp(-1, 1)


def train_classifier(out_path: str | os.PathLike | None = None, epochs: int = 30, patience: int = 6, seed: int = 0,
                     width: int = 48, batch_size: int = 128, split_seed: int = SPLIT_SEED, log=print) -> dict:
    """Train on the feature-train role of ``split_seed``'s split (never on the reference or the held-out
    split), keep the epoch with the best accuracy on held-out emoji, stop after ``patience`` epochs without
    a better one; save weights + metadata to a .safetensors file atomically."""
    out_path = Path(out_path or CLASSIFIER_PATH)
    torch.manual_seed(seed)
    feature_train, reference = real_roles(load_emoji(split="train"), split_seed)
    held = load_emoji(split="held_out")
    x, y = to_input(feature_train.images), torch.from_numpy(feature_train.labels)
    model = SpriteClassifier(num_classes=len(feature_train.class_names), width=width).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            xb = augment(x[perm[i:i + batch_size]], g).contiguous(memory_format=torch.channels_last)
            yb = y[perm[i:i + batch_size]]
            loss = F.cross_entropy(model(xb), yb, label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        acc = accuracy(model, held.images, held.labels)
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out emoji accuracy {acc:.3f}")
        if acc > best:
            best, best_epoch = acc, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch + 1 - best_epoch >= patience:
            log(f"stopping: no better held-out accuracy for {patience} epochs")
            break
    model.load_state_dict(best_state)
    model = model.to(memory_format=torch.contiguous_format)
    result = {"held_out_accuracy": best, "epoch": best_epoch, "seed": seed, "width": width,
              "classes": list(feature_train.class_names), "trained_on": "feature_train",
              "feature_train_images": len(feature_train), "reference_images": len(reference),
              "reference_fraction": REFERENCE_FRACTION, "split_seed": split_seed,
              "reference_accuracy": accuracy(model, reference.images, reference.labels)}
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata={"info": json.dumps(result)})
    os.replace(tmp, out_path)
    log(f"wrote {out_path}: held-out accuracy {best:.3f} (epoch {best_epoch}), reference {result['reference_accuracy']:.3f}")
    return result


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
    check_images(images)
    model.eval()
    preds, feats = [], []
    for i in range(0, len(images), batch_size):
        f = model.features(to_input(images[i:i + batch_size]))
        feats.append(f.numpy())
        preds.append(model.head(f).argmax(1).numpy())
    return np.concatenate(preds), np.concatenate(feats).astype(np.float64)


def accuracy(model, images, labels) -> float:
    return float((predict(model, images)[0] == np.asarray(labels)).mean())


# ---------------------------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------------------------
def check_images(images, name: str = "images", size: int = 32, minimum: int = 1) -> None:
    """uint8 (N, size, size, 3) with N >= minimum, or a ValueError that says what is wrong."""
    if not isinstance(images, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 in 0..255, got {images.dtype}")
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"{name} must have shape (N, {size}, {size}, 3), got {images.shape}")
    if len(images) < minimum:
        raise ValueError(f"{name}: at least {minimum} images are needed, got {len(images)}")


def check_features(features, name: str, minimum: int = 2) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < minimum:
        raise ValueError(f"{name} must be (N >= {minimum}, D) features, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return features


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD between Gaussians fitted to two feature sets: |μa-μb|² + Tr(Σa) + Tr(Σb) - 2 Tr((Σa^½ Σb Σa^½)^½)."""
    features_a, features_b = check_features(features_a, "features_a"), check_features(features_b, "features_b")
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    vals, vecs = np.linalg.eigh(cov_a)
    sqrt_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / d + 1)^3 (Binkowski et al. 2018):
    mean k over distinct pairs within a, plus within b, minus twice the mean k across. 0 in expectation
    when both sets come from one distribution, so it can come out slightly negative."""
    a, b = check_features(features_a, "features_a"), check_features(features_b, "features_b")
    d = a.shape[1]
    k_aa, k_bb, k_ab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    m, n = len(a), len(b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def knn_radii(features: torch.Tensor, k: int = NEIGHBOURS) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point: the radius of its ball in the manifold."""
    distances = torch.cdist(features, features)
    return distances.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def in_manifold(points: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """True for each point inside at least one ball (manifold point, radius)."""
    inside = [(torch.cdist(points[i:i + batch], manifold) <= radii[None]).any(1) for i in range(0, len(points), batch)]
    return torch.cat(inside)


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray, k: int = NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision = share of fakes inside the
    real k-NN manifold, recall = share of reals inside the fakes' k-NN manifold."""
    real = torch.from_numpy(check_features(real_features, "real features", k + 1))
    fake = torch.from_numpy(check_features(fake_features, "sample features", k + 1))
    precision = in_manifold(fake, real, knn_radii(real, k)).double().mean()
    recall = in_manifold(real, fake, knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)


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
