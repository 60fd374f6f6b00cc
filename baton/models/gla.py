"""Gated linear attention token mixer (Yang et al. 2024, arXiv 2312.06635)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baton.config import ModelConfig
from baton.kernels import chunk_gla, recurrent_step
from baton.kernels.carry import scan_carrying, state_after
from baton.models.mixer import RelayPoints
from baton.models.norm import GatedRMSNorm
from baton.models.state import LayerState


class GLAMixer(nn.Module):
    """q, k, v projections, a low-rank data-dependent forget gate per key dim, a chunked scan,
    a per-head RMSNorm and a SiLU output gate.

    ``self.scan`` is the chunked-scan op; sequence parallelism swaps it for a relaying one.
    """

    relays = RelayPoints(output="o_proj", scan="scan")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, dk, dv, H = cfg.d_model, cfg.key_dim, cfg.value_dim, cfg.n_heads
        self.n_heads, self.chunk_size, self.gate_normalizer = H, cfg.chunk_size, cfg.gate_normalizer
        self.q_proj = nn.Linear(d, dk, bias=False)
        self.k_proj = nn.Linear(d, dk, bias=False)
        self.v_proj = nn.Linear(d, dv, bias=False)
        self.out_gate = nn.Linear(d, dv, bias=False)
        self.forget_gate = nn.Sequential(nn.Linear(d, cfg.gate_low_rank, bias=False), nn.Linear(cfg.gate_low_rank, dk))
        self.head_norm = GatedRMSNorm(dv // H, eps=cfg.norm_eps, norm_first=True)
        self.o_proj = nn.Linear(dv, d, bias=False)
        self.scan = chunk_gla

    def _heads(self, x: Tensor, proj: nn.Module) -> Tensor:
        return proj(x).view(*x.shape[:2], self.n_heads, -1)

    def _key_value_gate(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # log sigmoid(z) = -softplus(-z), written so: logsigmoid keeps a buffer the size of its
        # input for backward on CPU (not on CUDA); softplus keeps its input alone on both.
        g = -F.softplus(-self._heads(x, self.forget_gate)) / self.gate_normalizer
        return self._heads(x, self.k_proj), self._heads(x, self.v_proj), g

    def forward(
        self, x: Tensor, cu_seqlens: Tensor | None = None, state: LayerState | None = None, summary_only: bool = False
    ) -> tuple[Tensor | None, LayerState | None]:
        """x: [B, T, d] -> [B, T, d]. With ``state`` (a packed piece, B == 1) the piece's first
        document continues from it, and the state after the piece is returned too;
        ``summary_only`` returns that state alone (no outputs: what a rank relays)."""
        k, v, g = self._key_value_gate(x)
        after = None
        if state is not None:
            S, transition = state_after(k, v, (g,), cu_seqlens, state.scan, state.transition, self.chunk_size)
            after = LayerState(S, transition=transition)
            if summary_only:
                return None, after
        q = self._heads(x, self.q_proj)
        if state is None:
            o, _ = self.scan(q, k, v, g, cu_seqlens=cu_seqlens, chunk_size=self.chunk_size)
        else:
            o = scan_carrying(self.scan, q, k, v, (g,), None, cu_seqlens, self.chunk_size, state.scan)
        o = self.head_norm(o, self._heads(x, self.out_gate))
        return self.o_proj(o.reshape(*x.shape[:2], -1)), after

    def step(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """One token for each of B streams (decoding): x [B, d] -> [B, d], the state
        [B, H, K, V] (None: zero) updated by the recurrence, the fixed-size cache of a
        recurrent model."""
        k, v, g = (t[:, 0] for t in self._key_value_gate(x[:, None]))
        q = self._heads(x[:, None], self.q_proj)[:, 0]
        S = state.scan if state.scan is not None else k.new_zeros(*k.shape, v.shape[-1], dtype=torch.float32)
        o, S = recurrent_step(q, k, v, g, S, q.shape[-1] ** -0.5)
        o = self.head_norm(o, self._heads(x[:, None], self.out_gate)[:, 0])
        return self.o_proj(o.reshape(x.shape[0], -1)), LayerState(S)
