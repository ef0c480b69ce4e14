"""A small U-Net noise predictor with time and context embeddings.

The shape follows Ho et al. 2020 (DDPM, appendix B) and Nichol & Dhariwal 2021 (Improved DDPM):
residual blocks with GroupNorm and SiLU, a sinusoidal time embedding (Vaswani et al. 2017, sec. 3.5)
through an MLP, the embedding injected into every residual block as a per-channel scale and shift
of the normalised features ("adaptive group norm", Improved DDPM sec. 3 / Dhariwal & Nichol 2021
sec. 3), self-attention at the low resolutions. The context is a K-dim float vector (one-hot, a
blend, or all zeros for "no context") embedded by an MLP and added to the time embedding.

With ``vocab_size`` > 0 the U-Net also reads a text prompt (token ids, see text.py): its own text
encoder's token features enter by cross-attention after each self-attention (Rombach et al. 2022,
sec. 3.3), and its first token's feature is added to the time embedding (Nichol et al. 2022, GLIDE).

With ``guidance_embedding`` the U-Net also takes the guidance strength w as an input, embedded like
t and added to the time embedding (Meng et al. 2023, "On Distillation of Guided Diffusion Models",
sec. 4.1): a guidance-distilled student computes in one call what the teacher needs two for.

With ``patch_size`` p > 1 the U-Net works on p x p patches of pixels: each patch's p²·C values become one
position's channels on the way in (``pixel_unshuffle``) and the last convolution predicts them back
(``pixel_shuffle``), as ViT's and DiT's patch embeddings do (Dosovitskiy et al. 2021; Peebles & Xie 2023,
sec. 3.2). The network's top level then runs at (H/p)x(W/p), where a CPU spends most of a step.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from safetensors.torch import load_file
from torch import nn

from .text import TextEncoder


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, sec. 3.5): [cos(t·f_k), sin(t·f_k)]
    with f_k = max_period^(-k/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def embed_guidance(w: torch.Tensor, dim: int) -> torch.Tensor:
    """w's embedding: the sinusoids of t at 100·w, so guidance 0..10 spans what timesteps 0..1000 span."""
    return timestep_embedding(100.0 * w.float(), dim)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention, softmax(Q K^T / √d) V (Vaswani et al. 2017, eq. 1). When training, written
    out: for the U-Net's short sequences (at most 64 positions, 16 tokens) the plain matmuls and their backward
    train faster on a CPU than PyTorch's fused flash kernel, whose backward is tuned for long sequences; when
    sampling, the fused kernel, which is faster forward (``benchmarks/training_speed.py --compare`` and
    ``benchmarks/app_default.py --compare``). ``mask`` (broadcast to the scores) is True where a key may be
    attended to; every query must keep at least one key."""
    if not torch.is_grad_enabled():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def size_factor(image_size: int, patch_size: int, channel_mults) -> int:
    """patch_size x 2^(levels - 1): what every input size of a U-Net with these levels must be a multiple of
    (each level but the last halves it); ValueErrors for a patch_size below 1 or an image_size that is not one."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    factor = patch_size * 2 ** (len(channel_mults) - 1)
    if image_size % factor:
        raise ValueError(f"image_size {image_size} must be divisible by patch_size x 2^{len(channel_mults) - 1} "
                         f"= {factor}")
    return factor


def checked_inputs(model: nn.Module, x: torch.Tensor, context: torch.Tensor | None, tokens: torch.Tensor | None,
                   guidance: torch.Tensor | None, flipped: torch.Tensor | None):
    """What a network's ``forward`` checks before it computes (``UNet`` and ``unet_mp.MPUNet`` alike, so a caller
    gets the same error from either): x_t's shape, then context, flipped, guidance and tokens against the
    model's ``in_channels``, ``size_factor``, ``context_dim``, ``flip_condition``, ``guidance_embedding``,
    ``vocab_size`` and ``max_tokens``. Returns (context, tokens): None made all zeros (no context) and, for a
    text model, all padding (no text)."""
    factor = model.size_factor
    if (x.dim() != 4 or x.shape[1] != model.in_channels or min(x.shape[2:]) < factor
            or x.shape[2] % factor or x.shape[3] % factor):
        # fully convolutional: any size the levels divide runs (a resolution curriculum trains smaller)
        raise ValueError(f"x_t must have shape (N, {model.in_channels}, {model.image_size}, {model.image_size}) "
                         f"(or another size divisible by {factor}), got {tuple(x.shape)}")
    if context is None:
        context = x.new_zeros(x.shape[0], model.context_dim)
    elif context.dim() != 2 or context.shape != (x.shape[0], model.context_dim):
        raise ValueError(f"context must have shape (N={x.shape[0]}, {model.context_dim}), got {tuple(context.shape)}")
    if flipped is not None:
        if not model.flip_condition:
            raise ValueError("this model takes no flip input (flip_condition False)")
        if flipped.shape != (x.shape[0],):
            raise ValueError(f"flipped must have shape (N={x.shape[0]},), got {tuple(flipped.shape)}")
    if model.guidance_embedding:
        if guidance is None or guidance.shape != (x.shape[0],):
            raise ValueError(f"this guidance-distilled model needs guidance: a float tensor of shape (N={x.shape[0]},)")
    elif guidance is not None:
        raise ValueError("this model takes no guidance input (guidance_embedding False); guide it with two calls")
    if model.vocab_size:
        if tokens is None:
            tokens = torch.zeros(x.shape[0], model.max_tokens, dtype=torch.long, device=x.device)
        elif tokens.shape != (x.shape[0], model.max_tokens) or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be long of shape (N={x.shape[0]}, {model.max_tokens}), "
                             f"got {tokens.dtype} {tuple(tokens.shape)}")
    elif tokens is not None:
        raise ValueError("this model has no text encoder (vocab_size 0); give no tokens")
    return context, tokens


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (Wu & He 2018) that normalises a contiguous copy of a channels-last bf16 input on the
    CPU where PyTorch's channels-last bf16 kernel is slow: at 16x16 and below (3-5x slower than the contiguous
    one in sampling), and at every size when training, whose backward otherwise transposes its inputs each
    call (+8% training images/s on the shipped recipe). Same result, same state dict;
    ``benchmarks/cpu_tuning.py`` and ``benchmarks/training_speed.py`` measure it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last_bf16 = (x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() == 4
                              and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last))
        if channels_last_bf16 and (torch.is_grad_enabled() or x.shape[-1] * x.shape[-2] <= 256):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, then GroupNorm scaled and shifted by the embedding -> SiLU -> conv,
    plus a (1x1-projected) skip. The last conv starts at zero so each block starts as the identity."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, num_groups: int, dropout: float):
        super().__init__()
        self.norm1 = GroupNorm(num_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = GroupNorm(num_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, text=None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions (Vaswani et al. 2017), residual, zero-started;
    in a text model followed by cross-attention to the prompt's tokens (as latent diffusion's
    transformer blocks do), kept inside this module so a model without text has the same tensors."""

    def __init__(self, channels: int, num_heads: int, num_groups: int, text_dim: int = 0):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm(num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.cross = CrossAttention(channels, text_dim, num_heads, num_groups) if text_dim else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, text=None) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (n, heads, hw, c/heads)
        out = attend(q, k, v)
        x = x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))
        return x if self.cross is None else self.cross(x, text)


class CrossAttention(nn.Module):
    """Queries from the image positions, keys and values from the text tokens (Rombach et al. 2022,
    eq. 1: softmax(Q K^T / √d) V), residual, zero-started so a new block changes nothing at first."""

    def __init__(self, channels: int, text_dim: int, num_heads: int, num_groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm(num_groups, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(text_dim, 2 * channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, text) -> torch.Tensor:
        tokens, real = text                                          # (n, L, text_dim), (n, L) bool
        n, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        q = self.q(self.norm(x)).reshape(n, heads, d, h * w).transpose(-1, -2)        # (n, heads, hw, d)
        k, v = self.kv(tokens.to(x.dtype)).reshape(n, -1, 2, heads, d).permute(2, 0, 3, 1, 4)  # (n, heads, L, d)
        out = attend(q, k, v, real[:, None, None, :])
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, emb=None, text=None):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, emb=None, text=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module, PyTorchModelHubMixin):
    """ε- (or v-) prediction network: ``model(x_t, t, context, tokens) -> prediction`` with x_t (N,C,H,W),
    t (N,) long, context (N, context_dim) float or None (None = all zeros = no context), and for a
    text model tokens (N, max_tokens) long or None (None = all padding = no text). A distilled student
    (guidance_embedding) also takes guidance (N,) = w; a flip-conditioned model (flip_condition) may be
    told flipped (N,) in 0/1 during training (None = 0 = not mirrored, what sampling asks for).

    Every argument is JSON-serialisable, so ``save_pretrained``/``from_pretrained`` (from
    huggingface_hub's PyTorchModelHubMixin) store it as config.json beside model.safetensors.
    """

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
        num_groups: int = 16,
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
        self.patch_size = patch_size
        self.size_factor = size_factor(image_size, patch_size, channel_mults)
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.context_mlp = nn.Sequential(nn.Linear(context_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.vocab_size, self.max_tokens = vocab_size, max_tokens
        self.guidance_embedding = guidance_embedding
        if guidance_embedding:  # zero-started: a student made from its teacher starts by computing what it does, for any w
            self.guidance_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            nn.init.zeros_(self.guidance_mlp[-1].weight)
            nn.init.zeros_(self.guidance_mlp[-1].bias)
        self.flip_condition = flip_condition
        if flip_condition:  # augmentation as a condition (Karras et al. 2022, EDM sec. 5): no bias, so unmirrored = 0
            self.flip_embedding = nn.Linear(1, base_channels, bias=False)
        if vocab_size:
            self.text_encoder = TextEncoder(vocab_size, text_dim, text_layers, num_heads, max_tokens)
            self.text_mlp = nn.Sequential(nn.Linear(text_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            nn.init.zeros_(self.text_mlp[-1].weight)
            nn.init.zeros_(self.text_mlp[-1].bias)

        def attention(channels):
            return SelfAttention(channels, num_heads, num_groups, text_dim if vocab_size else 0)

        def block(c_in, c_out, resolution):
            layers = [ResBlock(c_in, c_out, emb_dim, num_groups, dropout)]
            if resolution in attention_resolutions:
                layers.append(attention(c_out))
            return nn.ModuleList(layers)

        self.conv_in = nn.Conv2d(in_channels * patch_size**2, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels, channels, resolution = [base_channels], base_channels, image_size // patch_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(block(channels, base_channels * mult, resolution))
                channels = base_channels * mult
                skip_channels.append(channels)
            if level < len(channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(channels)]))
                skip_channels.append(channels)
                resolution //= 2

        self.mid = nn.ModuleList([
            ResBlock(channels, channels, emb_dim, num_groups, dropout),
            attention(channels),
            ResBlock(channels, channels, emb_dim, num_groups, dropout),
        ])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):
                self.up.append(block(channels + skip_channels.pop(), base_channels * mult, resolution))
                channels = base_channels * mult
                if level > 0 and i == num_res_blocks:
                    self.up[-1].append(Upsample(channels))
                    resolution *= 2

        self.norm_out = GroupNorm(num_groups, channels)
        self.conv_out = nn.Conv2d(channels, in_channels * patch_size**2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token,
                         map_location="cpu", strict=True, **model_kwargs):
        """Overrides the mixin's loader: model.safetensors only (never a pickle), always strict."""
        model = cls(**model_kwargs)
        if os.path.isdir(model_id):
            weights = os.path.join(model_id, WEIGHTS_NAME)
        else:
            weights = hf_hub_download(model_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir,
                                      force_download=force_download, token=token, local_files_only=local_files_only)
        load_weights_strict(model, weights, map_location)
        return model

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                flipped: torch.Tensor | None = None) -> torch.Tensor:
        context, tokens = checked_inputs(self, x, context, tokens, guidance, flipped)
        time_features = timestep_embedding(t, self.base_channels).to(x.dtype)
        if flipped is not None:  # training only: sampling asks for unmirrored pictures, whose term is zero
            time_features = time_features + self.flip_embedding(flipped.to(x.dtype)[:, None])  # as EDM's augment labels
        emb = self.time_mlp(time_features) + self.context_mlp(context.to(x.dtype))
        if self.guidance_embedding:
            emb = emb + self.guidance_mlp(embed_guidance(guidance, self.base_channels).to(x.dtype))
        text = None
        if self.vocab_size:
            text = self.text_encoder(tokens)
            emb = emb + self.text_mlp(text[0][:, 0])
        h = self.conv_in(F.pixel_unshuffle(x, self.patch_size) if self.patch_size > 1 else x)
        skips = [h]
        for layers in self.down:
            for layer in layers:
                h = layer(h, emb, text)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb, text)
        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in layers:
                h = layer(h, emb, text)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out


WEIGHTS_NAME = "model.safetensors"
WEIGHTS_DTYPES = {"float32": torch.float32, "float16": torch.float16}  # how a checkpoint's weights are stored


def weights_torch_dtype(weights_dtype: str) -> torch.dtype:
    """The torch dtype a checkpoint's weights are stored in, from its name; a ValueError names the choices."""
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {sorted(WEIGHTS_DTYPES)}, got {weights_dtype!r}")
    return WEIGHTS_DTYPES[weights_dtype]


def round_weights(model: nn.Module, weights_dtype: str) -> nn.Module:
    """Round the floating-point weights through ``weights_dtype`` in place, so the model computes exactly
    what a file stored in that precision loads back as. float16 on disk halves the file; the U-Net still
    runs in float32, and each weight in float16's normal range (above 6e-5) moves by at most 2^-11 of itself."""
    dtype = weights_torch_dtype(weights_dtype)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype))
    return model


def load_weights_strict(model: nn.Module, path: str, map_location: str = "cpu") -> nn.Module:
    """Load a .safetensors file into ``model``: every tensor must be present, expected and the right
    shape, or a ValueError lists what is wrong. safetensors holds plain tensors, so nothing is unpickled."""
    if not os.path.isfile(path):
        raise ValueError(f"no weights file {path!r}: a checkpoint needs {WEIGHTS_NAME} (pickle files are never loaded)")
    try:
        state = load_file(path, device=str(map_location))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path!r} is not a readable safetensors file: {err}") from err
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for label, keys in (("missing tensors", missing), ("unexpected tensors", unexpected),
                                    ("mis-shaped tensors", misshaped)) if keys]
    if problems:
        raise ValueError(f"weights in {path!r} do not match the model config: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def count_flops(model: UNet, batch_size: int = 1) -> int:
    """FLOPs of one forward pass (torch.utils.flop_counter; a multiply-add counts as 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(batch_size, model.in_channels, model.image_size, model.image_size)
    t = torch.zeros(batch_size, dtype=torch.long)
    w = torch.ones(batch_size) if model.guidance_embedding else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, None, guidance=w)
    return counter.get_total_flops()
