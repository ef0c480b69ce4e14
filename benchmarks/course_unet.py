"""The course's ContextUnet ("How Diffusion Models Work", n_feat=64) re-built from its published
architecture, for one purpose: timing it against our U-Net at 32x32. Its weights are random; only
its shape (and so its cost) matters here. Blocks: residual pairs of 3x3 conv + BatchNorm + GELU,
two down stages with max-pooling, a transposed-conv bottleneck, two up stages with skips."""
from __future__ import annotations

import torch
from torch import nn


class ConvPair(nn.Module):
    def __init__(self, c_in: int, c_out: int, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.a = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.GELU())
        self.b = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.GELU())

    def forward(self, x):
        h = self.b(self.a(x))
        if not self.residual:
            return h
        return ((x if x.shape[1] == h.shape[1] else self.a(x)) + h) / 1.414


class CourseContextUnet(nn.Module):
    def __init__(self, in_channels=3, n_feat=64, n_cfeat=5, height=32):
        super().__init__()
        f = n_feat
        self.init_conv = ConvPair(in_channels, f, residual=True)
        self.down1 = nn.Sequential(ConvPair(f, f), ConvPair(f, f), nn.MaxPool2d(2))
        self.down2 = nn.Sequential(ConvPair(f, 2 * f), ConvPair(2 * f, 2 * f), nn.MaxPool2d(2))
        self.to_vec = nn.Sequential(nn.AvgPool2d(height // 4), nn.GELU())  # 1x1 bottleneck at any height
        self.t1, self.t2 = self._fc(1, 2 * f), self._fc(1, f)
        self.c1, self.c2 = self._fc(n_cfeat, 2 * f), self._fc(n_cfeat, f)
        self.up0 = nn.Sequential(nn.ConvTranspose2d(2 * f, 2 * f, height // 4, height // 4), nn.GroupNorm(8, 2 * f), nn.ReLU())
        self.up1 = nn.Sequential(nn.ConvTranspose2d(4 * f, f, 2, 2), ConvPair(f, f), ConvPair(f, f))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(2 * f, f, 2, 2), ConvPair(f, f), ConvPair(f, f))
        self.out = nn.Sequential(nn.Conv2d(2 * f, f, 3, 1, 1), nn.GroupNorm(8, f), nn.ReLU(), nn.Conv2d(f, in_channels, 3, 1, 1))
        self.n_cfeat = n_cfeat

    @staticmethod
    def _fc(d_in, d_out):
        return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))

    def forward(self, x, t, c=None):
        x = self.init_conv(x)
        d1 = self.down1(x)
        d2 = self.down2(d1)
        hidden = self.to_vec(d2)
        c = torch.zeros(x.shape[0], self.n_cfeat, device=x.device) if c is None else c
        t = t.float()[:, None] / 1000
        emb = lambda fc, v, ch: fc(v).view(-1, ch, 1, 1)
        u1 = self.up0(hidden)
        u2 = self.up1(torch.cat([emb(self.c1, c, u1.shape[1]) * u1 + emb(self.t1, t, u1.shape[1]), d2], 1))
        u3 = self.up2(torch.cat([emb(self.c2, c, u2.shape[1]) * u2 + emb(self.t2, t, u2.shape[1]), d1], 1))
        return self.out(torch.cat([u3, x], 1))
