"""Mamba2-style token mixer: short causal conv, scalar-gated SSD scan, gated RMSNorm
(Dao & Gu 2024, arXiv 2405.21060)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baton.kernels import causal_conv1d, chunk_ssd
from baton.models.config import ModelConfig


class SSDMixer(nn.Module):
    """``self.scan`` and ``self.conv`` are the kernel ops; sequence parallelism swaps them."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, inner, N, H = cfg.d_model, cfg.ssd_inner, cfg.ssd_state_dim, cfg.ssd_heads
        self.inner, self.state_dim, self.n_heads, self.chunk_size = inner, N, H, cfg.chunk_size
        self.in_proj = nn.Linear(d, 2 * inner + 2 * N + H, bias=False)
        conv_dim = inner + 2 * N
        self.conv_weight = nn.Parameter(torch.empty(conv_dim, cfg.conv_size))
        self.conv_bias = nn.Parameter(torch.zeros(conv_dim))
        nn.init.uniform_(self.conv_weight, -1 / math.sqrt(cfg.conv_size), 1 / math.sqrt(cfg.conv_size))
        # dt in [1e-3, 1e-1] and decay rates A in [1, 16] at init, as in Mamba2.
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = nn.RMSNorm(inner, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(inner, d, bias=False)
        self.scan = chunk_ssd
        self.conv = causal_conv1d

    def forward(self, x: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        z, xbc, dt = self.in_proj(x).split([self.inner, self.inner + 2 * self.state_dim, self.n_heads], dim=-1)
        xbc = F.silu(self.conv(xbc, self.conv_weight, self.conv_bias, cu_seqlens))
        xs, b, c = xbc.split([self.inner, self.state_dim, self.state_dim], dim=-1)
        xs = xs.view(B, T, self.n_heads, -1)
        dt = F.softplus(dt + self.dt_bias)
        g = -self.A_log.exp() * dt
        heads = (B, T, self.n_heads, self.state_dim)
        y, _ = self.scan(
            c[:, :, None].expand(heads),
            b[:, :, None].expand(heads),
            xs * dt[..., None].to(xs.dtype),
            g,
            scale=1.0,
            cu_seqlens=cu_seqlens,
            chunk_size=self.chunk_size,
        )
        y = y + self.D[:, None] * xs
        return self.out_proj(self.norm(y.reshape(B, T, -1) * F.silu(z)))
