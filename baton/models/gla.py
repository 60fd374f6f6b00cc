"""Gated linear attention token mixer (Yang et al. 2024, arXiv 2312.06635)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from baton.kernels import chunk_gla
from baton.models.config import ModelConfig


class GLAMixer(nn.Module):
    """q, k, v projections, a low-rank data-dependent forget gate per key dim, a chunked scan,
    a per-head RMSNorm and a SiLU output gate.

    ``self.scan`` is the chunked-scan op; sequence parallelism swaps it for a relaying one.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, dk, dv, H = cfg.d_model, cfg.key_dim, cfg.value_dim, cfg.n_heads
        self.n_heads, self.chunk_size, self.gate_normalizer = H, cfg.chunk_size, cfg.gate_normalizer
        self.q_proj = nn.Linear(d, dk, bias=False)
        self.k_proj = nn.Linear(d, dk, bias=False)
        self.v_proj = nn.Linear(d, dv, bias=False)
        self.out_gate = nn.Linear(d, dv, bias=False)
        self.forget_gate = nn.Sequential(nn.Linear(d, cfg.gate_low_rank, bias=False), nn.Linear(cfg.gate_low_rank, dk))
        self.head_norm = nn.RMSNorm(dv // H, eps=cfg.norm_eps)
        self.o_proj = nn.Linear(dv, d, bias=False)
        self.scan = chunk_gla

    def forward(self, x: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        heads = (B, T, self.n_heads, -1)
        q, k, v = (proj(x).view(heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        g = F.logsigmoid(self.forget_gate(x)).view(heads) / self.gate_normalizer
        o, _ = self.scan(q, k, v, g, cu_seqlens=cu_seqlens, chunk_size=self.chunk_size)
        o = self.head_norm(o) * F.silu(self.out_gate(x)).view(heads)
        return self.o_proj(o.reshape(B, T, -1))
