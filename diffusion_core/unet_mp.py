"""A magnitude-preserving U-Net without normalisation layers: EDM2's network (Karras et al. 2024, "Analyzing
and Improving the Training Dynamics of Diffusion Models", sec. 2, Configs C-G, and Fig. 21 of the appendix)
on unet.py's level layout, selected for training by ``"network": "mp_unet"`` (networks.py).

Each layer keeps its activations at magnitude (RMS) about 1 for unit-magnitude inputs, so no GroupNorm is
needed, and each weight keeps a fixed norm, so the effective learning rate does not drift as weights grow:

- ``MPConv``, every convolution and linear layer: no bias (Config C); the weight used as ŵ_i = w_i / ‖w_i‖ per
  output channel i (weight normalisation, Salimans & Kingma 2016; Config D), and, while training, the stored
  weight put back to unit norm in place before it is used ("forced weight normalisation", Config E).
  Convention: the *stored* w_i has ‖w_i‖ = 1. EDM2 stores ‖w_i‖ = √N_in (unit-variance elements) and trains
  at α_ref ≈ 0.01; Adam's steps do not depend on the gradient's scale, so storing unit norm is that at a
  per-layer α = lr·√N_in: the trainer's lr (3e-4) gives α ≈ 0.001-0.02 here, and the text encoder, an
  ordinary transformer sharing the optimizer, trains at the lr it has in UNet.
- Fixed-function layers (Config G): ``mp_silu`` (SiLU / 0.596), ``mp_sum`` (a weighted sum that keeps magnitude
  1), ``mp_cat`` (concatenation with each part scaled so the whole has magnitude 1); ``pixel_norm`` on the
  encoder blocks' input (Config F, in place of GroupNorm); cosine attention, q, k and v pixel-normalised per
  head before softmax(q kᵀ/√d) v (Config C).
- Embedding: the noise level's Fourier features (Config C) through an MPConv; the class and style context
  (K floats, times √K so a one-hot row has magnitude 1) through an MPConv; the two joined by mp_sum(t=0.5),
  then mp_silu. The noise input stays unet.py's integer timestep t (c_noise = t, a monotone map of σ as in
  EDM's VP row and edm.py), and its features are unet.py's sinusoids [cos(t·f_k), sin(t·f_k)] times √2,
  whose RMS is exactly 1 for every t (EDM2's random-frequency features have it in expectation).
- Blocks (Fig. 21): an encoder block (2x average-pooled for a "down" block; a 1x1 MPConv where the width
  changes) pixel-normalises its input, then x ← mp_sum(x, y, 0.3) with the residual
  y = conv(mp_silu(conv(mp_silu(x)) · (1 + g·Lin(emb)))), g a learned gain that starts at 0; a decoder block
  (nearest 2x upsampled for an "up" block) takes the encoder's skip by mp_cat(t=0.5), without pixel norm;
  self-attention at ``attention_resolutions`` and in the middle joins by mp_sum(t=0.3). The input gets a
  constant channel of ones before the first conv (Config C, for the biases); the last conv has a learned gain
  that starts at 0, so the untrained network predicts 0, as unet.py's zero-initialised last layer does.

With ``vocab_size`` > 0 it reads a prompt as UNet does (text.py's ``TextEncoder``, whose final LayerNorm gives
unit-magnitude token features): cross-attention after each self-attention, cosine as well and joined by
mp_sum(t=0.3); the first token's feature through an MPConv, mp_sum-ed (t=0.5) with the context's embedding, so
class, style and text together balance the noise level. With ``guidance_embedding`` (a distilled student's w)
the embedding gets g·MPConv(√2·sinusoids of 100·w) added, g a gain that starts at 0 (a student starts as its
teacher); with ``flip_condition`` the noise features get flipped·v added, v a zero-started vector (0 when
unmirrored, as in UNet). These additions and the gains are the learned magnitudes EDM2 keeps (its output gain).
``patch_size`` works as in unet.py. Layers that play UNet's parts keep UNet's names (``time_mlp``,
``context_mlp``, ``text_mlp``, ``guidance_mlp``, ``flip_embedding``, ``text_encoder``), so the trainer's and the
distiller's code that finds them by name serves both networks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .text import TextEncoder
from .unet import UNet, attend, checked_inputs, embed_guidance, size_factor, timestep_embedding

RES_BALANCE = 0.3     # t of mp_sum(x, residual) in every block (EDM2 Fig. 21)
ATTN_BALANCE = 0.3    # t of mp_sum(x, attention)
CONCAT_BALANCE = 0.5  # t of mp_cat(x, skip) in the decoder
COND_BALANCE = 0.5    # t of mp_sum(noise embedding, condition embedding), and of context with text
SILU_SCALE = 0.596    # E[silu(z)²]^½ for z ~ N(0, 1)
EPS = 1e-4


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU(x) / 0.596: unit magnitude out for standard normal in (EDM2 Config G)."""
    return F.silu(x) / SILU_SCALE


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """((1-t) a + t b) / √((1-t)² + t²): the weighted sum of two unit-magnitude, uncorrelated tensors keeps
    magnitude 1; t is b's share (EDM2 Config G)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, t: float = 0.5, dim: int = 1) -> torch.Tensor:
    """[a, b] along ``dim`` with a scaled by C(1-t)/√N_a and b by C t/√N_b, C = √((N_a+N_b)/((1-t)²+t²)): unit
    magnitude out for unit-magnitude parts, t weighing b against a as in ``mp_sum`` (EDM2 Config G)."""
    n_a, n_b = a.shape[dim], b.shape[dim]
    c = math.sqrt((n_a + n_b) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (c * (1 - t) / math.sqrt(n_a)), b * (c * t / math.sqrt(n_b))], dim=dim)


def pixel_norm(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x / (ε + RMS(x)) along ``dim``: each pixel's channel vector (or each head's q, k, v) at unit RMS
    (Karras et al. 2018, ProGAN sec. 4.2; EDM2 Configs C and F)."""
    rms = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32) / math.sqrt(x.shape[dim])
    return x / (EPS + rms).to(x.dtype)


def unit_rows(w: torch.Tensor) -> torch.Tensor:
    """w_i / (ε + ‖w_i‖) for every output channel i (dim 0): weight normalisation (EDM2 Config D)."""
    dims = tuple(range(1, w.dim()))
    return w / (EPS + torch.linalg.vector_norm(w, dim=dims, keepdim=True, dtype=torch.float32)).to(w.dtype)


class MPConv(nn.Module):
    """A magnitude-preserving convolution (``kernel`` (k, k)) or linear layer (``kernel`` ()): no bias, the
    weight used as ŵ_i = w_i/‖w_i‖ per output channel, so unit-variance inputs give unit-variance outputs;
    with ``learned_gain``, ŵ times a scalar gain g that starts at 0. While training (``self.training``, under
    autograd, a weight that takes gradients) the stored weight is put back to unit norm per output channel in place,
    under no_grad, once after each change (EDM2 Config E, forced weight normalisation); the gradient still
    flows through the normalisation, so it stays orthogonal to w."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...] = (), learned_gain: bool = False):
        super().__init__()
        self.weight = nn.Parameter(unit_rows(torch.randn(out_channels, in_channels, *kernel)))
        self.gain = nn.Parameter(torch.zeros([])) if learned_gain else None
        self.normalised_version = -1  # the weight's version when last put back to unit norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.training and torch.is_grad_enabled() and w.requires_grad and w._version != self.normalised_version:
            with torch.no_grad():
                w.copy_(unit_rows(w))
            self.normalised_version = w._version  # a second call in one step (same version) must not redo it
        w = unit_rows(w)
        if self.gain is not None:
            w = w * self.gain
        if w.dim() == 2:
            return F.linear(x, w.to(x.dtype))
        return F.conv2d(x, w.to(x.dtype), padding=w.shape[-1] // 2)


class CosineSelfAttention(nn.Module):
    """Self-attention over the H·W positions with q, k, v pixel-normalised per head (EDM2 Config C: cosine
    attention), joined by mp_sum(x, ·, 0.3); in a text model followed by cross-attention to the prompt's tokens,
    kept inside this module as unet.SelfAttention keeps it."""

    def __init__(self, channels: int, num_heads: int, text_dim: int = 0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = MPConv(channels, 3 * channels, (1, 1))
        self.proj = MPConv(channels, channels, (1, 1))
        self.cross = CosineCrossAttention(channels, text_dim, num_heads) if text_dim else None

    def forward(self, x: torch.Tensor, text=None) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(x).reshape(n, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (pixel_norm(qkv[:, i], dim=2).transpose(-1, -2) for i in range(3))  # (n, heads, hw, c/heads)
        out = attend(q, k, v)
        x = mp_sum(x, self.proj(out.transpose(-1, -2).reshape(n, c, h, w)), ATTN_BALANCE)
        return x if self.cross is None else self.cross(x, text)


class CosineCrossAttention(nn.Module):
    """Queries from the image positions, keys and values from the text tokens (Rombach et al. 2022, eq. 1),
    each pixel-normalised per head as in ``CosineSelfAttention``, joined by mp_sum(x, ·, 0.3)."""

    def __init__(self, channels: int, text_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = MPConv(channels, channels, (1, 1))
        self.kv = MPConv(text_dim, 2 * channels)
        self.proj = MPConv(channels, channels, (1, 1))

    def forward(self, x: torch.Tensor, text) -> torch.Tensor:
        tokens, real = text                                          # (n, L, text_dim), (n, L) bool
        n, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        q = pixel_norm(self.q(x).reshape(n, heads, d, h * w), dim=2).transpose(-1, -2)      # (n, heads, hw, d)
        kv = self.kv(tokens.to(x.dtype)).reshape(n, -1, 2, heads, d).permute(2, 0, 3, 1, 4)  # (2, n, heads, L, d)
        k, v = pixel_norm(kv, dim=-1)
        out = attend(q, k, v, real[:, None, None, :])
        return mp_sum(x, self.proj(out.transpose(-1, -2).reshape(n, c, h, w)), ATTN_BALANCE)


class Block(nn.Module):
    """EDM2's encoder or decoder block (Fig. 21): resample (``"down"``: 2x2 average pooling; ``"up"``: nearest
    2x), then x ← mp_sum(x, y, 0.3) with y = conv3(mp_silu(conv3(mp_silu(x)) · (1 + g·Lin(emb)))).
    An encoder block 1x1-convolves x to the new width first and pixel-normalises it; a decoder block
    1x1-convolves x (its input and the skip, mp_cat-ed) to the new width after the residual is computed. Then
    self-attention if ``attention``."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, encoder: bool, resample: str | None = None,
                 attention: bool = False, num_heads: int = 4, dropout: float = 0.0, text_dim: int = 0,
                 takes_skip: bool = False):
        super().__init__()
        self.encoder, self.resample, self.takes_skip = encoder, resample, takes_skip
        self.conv_skip = MPConv(in_channels, out_channels, (1, 1)) if in_channels != out_channels else None
        self.conv_res0 = MPConv(out_channels if encoder else in_channels, out_channels, (3, 3))
        self.emb_linear = MPConv(emb_dim, out_channels, learned_gain=True)  # g = 0: the modulation starts at 1
        self.dropout = nn.Dropout(dropout)
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3))
        self.attention = CosineSelfAttention(out_channels, num_heads, text_dim) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, text=None) -> torch.Tensor:
        if self.resample == "down":
            x = F.avg_pool2d(x, 2)
        elif self.resample == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.encoder:
            x = pixel_norm(x if self.conv_skip is None else self.conv_skip(x))
        y = self.conv_res0(mp_silu(x))
        scale = 1 + self.emb_linear(emb)[:, :, None, None].to(y.dtype)
        y = self.conv_res1(self.dropout(mp_silu(y * scale)))
        if not self.encoder and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, RES_BALANCE)
        return x if self.attention is None else self.attention(x, text)


class MPUNet(nn.Module, PyTorchModelHubMixin):
    """EDM2's magnitude-preserving U-Net with ``unet.UNet``'s interface: ``model(x_t, t, context, tokens,
    guidance, flipped) -> prediction``, the same arguments but ``num_groups`` (it has no GroupNorm), the same
    input checks and errors (``unet.checked_inputs``), the same level layout (``base_channels``,
    ``channel_mults``, ``num_res_blocks`` blocks per level, attention at ``attention_resolutions`` px and in the
    middle), and the same ``save_pretrained``/``from_pretrained`` (config.json + model.safetensors, strict)."""

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] | list[int] = (1, 2, 2, 4),
        num_res_blocks: int = 1,
        attention_resolutions: tuple[int, ...] | list[int] = (8, 4),
        context_dim: int = 10,
        num_heads: int = 4,
        dropout: float = 0.0,
        vocab_size: int = 0,
        text_dim: int = 128,
        text_layers: int = 2,
        max_tokens: int = 16,
        guidance_embedding: bool = False,
        flip_condition: bool = False,
        patch_size: int = 1,
    ):
        super().__init__()
        self.image_size, self.in_channels, self.context_dim = image_size, in_channels, context_dim
        self.patch_size, self.base_channels = patch_size, base_channels
        self.size_factor = size_factor(image_size, patch_size, channel_mults)
        self.vocab_size, self.max_tokens = vocab_size, max_tokens
        self.guidance_embedding, self.flip_condition = guidance_embedding, flip_condition
        emb_dim = 4 * base_channels
        self.time_mlp = MPConv(base_channels, emb_dim)
        self.context_mlp = MPConv(context_dim, emb_dim)
        if guidance_embedding:  # g = 0: a student made from its teacher starts by computing what it does, for any w
            self.guidance_mlp = MPConv(base_channels, emb_dim, learned_gain=True)
        if flip_condition:  # augmentation as a condition (Karras et al. 2022, EDM sec. 5): no bias, so unmirrored = 0
            self.flip_embedding = nn.Linear(1, base_channels, bias=False)
            nn.init.zeros_(self.flip_embedding.weight)
        if vocab_size:
            self.text_encoder = TextEncoder(vocab_size, text_dim, text_layers, num_heads, max_tokens)
            self.text_mlp = MPConv(text_dim, emb_dim)
        text_dim = text_dim if vocab_size else 0

        def block(c_in, c_out, encoder, attention=False, **kwargs):
            return Block(c_in, c_out, emb_dim, encoder, attention=attention, num_heads=num_heads, dropout=dropout,
                         text_dim=text_dim, **kwargs)

        self.conv_in = MPConv(in_channels * patch_size**2 + 1, base_channels, (3, 3))  # + the constant channel
        self.down = nn.ModuleList()
        skip_channels, channels, resolution = [base_channels], base_channels, image_size // patch_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(block(channels, base_channels * mult, True, resolution in attention_resolutions))
                channels = base_channels * mult
                skip_channels.append(channels)
            if level < len(channel_mults) - 1:
                self.down.append(block(channels, channels, True, resample="down"))
                skip_channels.append(channels)
                resolution //= 2

        self.mid = nn.ModuleList([block(channels, channels, False, attention=True), block(channels, channels, False)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(channels + skip_channels.pop(), base_channels * mult, False,
                                     resolution in attention_resolutions, takes_skip=True))
                channels = base_channels * mult
            if level > 0:
                self.up.append(block(channels, channels, False, resample="up"))
                resolution *= 2

        self.conv_out = MPConv(channels, in_channels * patch_size**2, (3, 3), learned_gain=True)  # g = 0: predicts 0

    _from_pretrained = UNet.__dict__["_from_pretrained"]  # UNet's loader: model.safetensors only, always strict

    def lr_scales(self) -> list[tuple[list[nn.Parameter], float]]:
        """The learned gains with their lr multiples, for ``train.adamw_with_scaled_groups``. EDM2 trains every
        parameter at one α against unit-variance storage; the unit-norm weights here get α = lr·√N_in from the
        lr, but a gain is a plain scalar, which Adam at the lr alone moves by at most lr a step (the output gain
        stood at 0.04 after 500 steps, so the network could hardly say ε or use the noise level). Each gain
        therefore learns at its layer's α: lr·√N_in, N_in its weight's fan-in."""
        by_scale: dict[float, list[nn.Parameter]] = {}
        for layer in self.modules():
            if isinstance(layer, MPConv) and layer.gain is not None:
                by_scale.setdefault(math.sqrt(layer.weight[0].numel()), []).append(layer.gain)
        return [(gains, scale) for scale, gains in by_scale.items()]

    def embedding(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, guidance, flipped,
                  text) -> torch.Tensor:
        """mp_silu(mp_sum(noise embedding, condition embedding, 0.5)) (+ g·w's embedding), the condition being the
        context's embedding, mp_sum-ed with the prompt's first token's in a text model (see the module docstring)."""
        features = math.sqrt(2) * timestep_embedding(t, self.base_channels).to(x.dtype)  # RMS exactly 1
        if flipped is not None:  # training only: sampling asks for unmirrored pictures, whose term is zero
            features = features + self.flip_embedding(flipped.to(x.dtype)[:, None])
        condition = self.context_mlp(context.to(x.dtype) * math.sqrt(self.context_dim))
        if text is not None:
            condition = mp_sum(condition, self.text_mlp(text[0][:, 0].to(x.dtype)), COND_BALANCE)
        emb = mp_sum(self.time_mlp(features), condition, COND_BALANCE)
        if self.guidance_embedding:
            emb = emb + self.guidance_mlp(math.sqrt(2) * embed_guidance(guidance, self.base_channels).to(x.dtype))
        return mp_silu(emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                flipped: torch.Tensor | None = None) -> torch.Tensor:
        context, tokens = checked_inputs(self, x, context, tokens, guidance, flipped)
        text = self.text_encoder(tokens) if self.vocab_size else None
        emb = self.embedding(x, t, context, guidance, flipped, text)
        h = F.pixel_unshuffle(x, self.patch_size) if self.patch_size > 1 else x
        h = self.conv_in(torch.cat([h, torch.ones_like(h[:, :1])], dim=1))
        skips = [h]
        for block in self.down:
            h = block(h, emb, text)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb, text)
        for block in self.up:
            if block.takes_skip:
                h = mp_cat(h, skips.pop(), CONCAT_BALANCE)
            h = block(h, emb, text)
        out = self.conv_out(h)
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out
