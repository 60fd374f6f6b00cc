"""Mamba2-style token mixer: short causal conv, scalar-gated SSD scan, gated RMSNorm
(Dao & Gu 2024, arXiv 2405.21060)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baton.config import ModelConfig
from baton.kernels import causal_conv1d, chunk_ssd, conv_step, recurrent_step
from baton.kernels.carry import conv_carrying, scan_carrying, state_after, tail_window
from baton.models.mixer import RelayPoints
from baton.models.norm import GatedRMSNorm
from baton.models.state import LayerState


class SSDMixer(nn.Module):
    """``self.scan`` and ``self.conv`` are the kernel ops; sequence parallelism swaps them."""

    relays = RelayPoints(output="out_proj", scan="scan", conv="conv")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, inner, N, H = cfg.d_model, cfg.ssd_inner, cfg.ssd_state_dim, cfg.ssd_heads
        self.inner, self.state_dim, self.n_heads, self.chunk_size = inner, N, H, cfg.chunk_size
        # The conv window's shape, as plain numbers: a sharded parameter's shape may not be its own.
        self.conv_channels, self.window = inner + 2 * N, cfg.conv_size - 1
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
        self.norm = GatedRMSNorm(inner, eps=cfg.norm_eps, norm_first=False)
        self.out_proj = nn.Linear(inner, d, bias=False)
        self.scan = chunk_ssd
        self.conv = causal_conv1d

    def _scan_inputs(
        self, x: Tensor, cu_seqlens: Tensor | None, window: Tensor | None, carrying: bool
    ) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """z; the scan's q, k, v, g (C, B, x·dt, -A·dt) and x, with its heads last; and when
        ``carrying`` a state (the conv entering through ``window``), the window after the piece."""
        B, T, _ = x.shape
        z, xbc, dt = self.in_proj(x).split([self.inner, self.conv_channels, self.n_heads], dim=-1)
        if carrying:
            conv, window = conv_carrying(
                self.conv, xbc, self.conv_weight, self.conv_bias, cu_seqlens, window, self.window
            )
        else:
            conv = self.conv(xbc, self.conv_weight, self.conv_bias, cu_seqlens)
        xs, b, c = F.silu(conv).split([self.inner, self.state_dim, self.state_dim], dim=-1)
        xs = xs.view(B, T, self.n_heads, -1)
        dt = F.softplus(dt + self.dt_bias)
        heads = (B, T, self.n_heads, self.state_dim)
        qkvg = [c[:, :, None].expand(heads), b[:, :, None].expand(heads), xs * dt[..., None].to(xs.dtype)]
        return z, [*qkvg, -self.A_log.exp() * dt, xs], window

    def forward(
        self, x: Tensor, cu_seqlens: Tensor | None = None, state: LayerState | None = None, summary_only: bool = False
    ) -> tuple[Tensor | None, LayerState | None]:
        """x: [B, T, d] -> [B, T, d]. With ``state`` (a packed piece, B == 1) the piece's first
        document continues from it, and the state after the piece is returned too;
        ``summary_only`` returns that state alone (no outputs: what a rank relays)."""
        B, T, _ = x.shape
        carrying = state is not None
        z, (q, k, v, g, xs), window = self._scan_inputs(x, cu_seqlens, state.conv if carrying else None, carrying)
        after = None
        if carrying:
            S, transition = state_after(k, v, (g,), cu_seqlens, state.scan, state.transition, self.chunk_size)
            after = LayerState(S, window, transition)
            if summary_only:
                return None, after
            y = scan_carrying(self.scan, q, k, v, (g,), 1.0, cu_seqlens, self.chunk_size, state.scan)
        else:
            y, _ = self.scan(q, k, v, g, scale=1.0, cu_seqlens=cu_seqlens, chunk_size=self.chunk_size)
        y = y + self.D[:, None] * xs
        return self.out_proj(self.norm(y.reshape(B, T, -1), z)), after

    def step(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """One token for each of B streams (decoding): x [B, d] -> [B, d]; the state: the scan
        state [B, H, N, P] and the conv window [B, W - 1, C] (None: zeros), both fixed-size."""
        B = x.shape[0]
        z, xbc, dt = self.in_proj(x).split([self.inner, self.conv_channels, self.n_heads], dim=-1)
        conv, window = conv_step(xbc, state.conv, self.conv_weight, self.conv_bias)
        xs, b, c = F.silu(conv).split([self.inner, self.state_dim, self.state_dim], dim=-1)
        xs = xs.view(B, self.n_heads, -1)
        dt = F.softplus(dt + self.dt_bias)
        heads = (B, self.n_heads, self.state_dim)
        q, k, v = c[:, None].expand(heads), b[:, None].expand(heads), xs * dt[..., None].to(xs.dtype)
        S = state.scan if state.scan is not None else k.new_zeros(*heads, xs.shape[-1], dtype=torch.float32)
        y, S = recurrent_step(q, k, v, -self.A_log.exp() * dt, S, 1.0)
        y = y + self.D[:, None] * xs
        return self.out_proj(self.norm(y.reshape(B, -1), z)), LayerState(S, window)

    def conv_window(self, x: Tensor) -> Tensor:
        """The conv window after x [B, T', d], the last tokens of a piece's last document (what
        the conv of a piece continuing it needs first): a projection of those tokens only."""
        return tail_window(lambda t: self.in_proj(t).narrow(-1, self.inner, self.conv_channels), x, self.window)
