"""Gated DeltaNet token mixer (Yang, Kautz & Hatamizadeh 2024, arXiv 2412.06464): the delta
rule with a scalar gate, ``S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ``.

With ``allow_neg_eigval`` β ranges over [0, 2], so the transition's eigenvalues over [−1, 1]:
what lets the layer track state such as parity (Grazzi et al. 2024, arXiv 2411.12537).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baton.config import ModelConfig
from baton.kernels import causal_conv1d, chunk_delta, conv_step, delta_step
from baton.kernels.carry import conv_carrying, scan_carrying, state_after, tail_window
from baton.models.mixer import RelayPoints
from baton.models.norm import GatedRMSNorm
from baton.models.state import LayerState


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / sqrt(|x|² + eps)`` over the last dim: flash-linear-attention's and Qwen3.5's form (an
    epsilon inside the root, where ``F.normalize`` clamps the norm), so exported weights compute
    the same."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


class GatedDeltaNetMixer(nn.Module):
    """q, k, v projections through one short causal conv and SiLU, q and k L2-normalised per
    head, a Mamba2-style scalar gate α = exp(−A·softplus(a + dt_bias)) and a sigmoid β per
    head and token, a per-head RMSNorm with a SiLU output gate.

    ``self.scan`` and ``self.conv`` are the kernel ops; sequence parallelism swaps them.
    """

    relays = RelayPoints(output="o_proj", scan="scan", conv="conv")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, H, K, V = cfg.d_model, cfg.n_heads, cfg.gdn_head_dim, cfg.gdn_value_head_dim
        self.n_heads, self.key_dim, self.value_dim, self.chunk_size = H, K, V, cfg.chunk_size
        self.beta_range = 2.0 if cfg.allow_neg_eigval else 1.0
        # The conv window's shape, as plain numbers: a sharded parameter's shape may not be its own.
        self.conv_channels, self.window = H * (2 * K + V), cfg.conv_size - 1
        self.qkv_proj = nn.Linear(d, self.conv_channels, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_channels, cfg.conv_size))
        nn.init.uniform_(self.conv_weight, -1 / math.sqrt(cfg.conv_size), 1 / math.sqrt(cfg.conv_size))
        self.conv_bias = None  # as in the paper's short convolutions
        self.gate_proj = nn.Linear(d, 2 * H, bias=False)  # α's and β's pre-activations
        # dt in [1e-3, 1e-1] and decay rates A in [1, 16] at init, as in Mamba2.
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.out_gate = nn.Linear(d, H * V, bias=False)
        self.head_norm = GatedRMSNorm(V, eps=cfg.norm_eps, norm_first=True)
        self.o_proj = nn.Linear(H * V, d, bias=False)
        self.scan = chunk_delta
        self.conv = causal_conv1d

    def _qkv(self, mixed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The conv's outputs [..., C] as q, k (unit norm) and v, heads split: [..., H, K|V]."""
        H, K = self.n_heads, self.key_dim
        q, k, v = F.silu(mixed).split([H * K, H * K, H * self.value_dim], dim=-1)
        q, k = (l2_normalize(t.unflatten(-1, (H, K))) for t in (q, k))
        return q, k, v.unflatten(-1, (H, self.value_dim))

    def _gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """log α (<= 0) and β, [..., H] each, in fp32 at least."""
        pre = self.gate_proj(x)
        a, b = pre.to(torch.promote_types(pre.dtype, torch.float32)).chunk(2, dim=-1)
        return -self.A_log.exp() * F.softplus(a + self.dt_bias), self.beta_range * torch.sigmoid(b)

    def _output(self, o: Tensor, x: Tensor) -> Tensor:
        o = self.head_norm(o, self.out_gate(x).unflatten(-1, (self.n_heads, self.value_dim)))
        return self.o_proj(o.flatten(-2))

    def forward(
        self, x: Tensor, cu_seqlens: Tensor | None = None, state: LayerState | None = None, summary_only: bool = False
    ) -> tuple[Tensor | None, LayerState | None]:
        """x: [B, T, d] -> [B, T, d]. With ``state`` (a packed piece, B == 1) the piece's first
        document continues from it, and the state after the piece is returned too;
        ``summary_only`` returns that state alone (no outputs: what a rank relays)."""
        mixed = self.qkv_proj(x)
        if state is not None:
            conv, window = conv_carrying(
                self.conv, mixed, self.conv_weight, self.conv_bias, cu_seqlens, state.conv, self.window
            )
        else:
            conv = self.conv(mixed, self.conv_weight, self.conv_bias, cu_seqlens)
        q, k, v = self._qkv(conv)
        gates, scale, after = self._gates(x), self.key_dim**-0.5, None
        if state is not None:
            S, transition = state_after(k, v, gates, cu_seqlens, state.scan, state.transition, self.chunk_size)
            after = LayerState(S, window, transition)
            if summary_only:
                return None, after
            o = scan_carrying(self.scan, q, k, v, gates, scale, cu_seqlens, self.chunk_size, state.scan)
        else:
            o, _ = self.scan(q, k, v, *gates, scale=scale, cu_seqlens=cu_seqlens, chunk_size=self.chunk_size)
        return self._output(o, x), after

    def step(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        """One token for each of B streams (decoding): x [B, d] -> [B, d]; the state: the scan
        state [B, H, K, V] and the conv window [B, W - 1, C] (None: zeros), both fixed-size."""
        conv, window = conv_step(self.qkv_proj(x), state.conv, self.conv_weight, self.conv_bias)
        q, k, v = self._qkv(conv)
        S = state.scan
        if S is None:
            S = k.new_zeros(x.shape[0], self.n_heads, self.key_dim, self.value_dim, dtype=torch.float32)
        o, S = delta_step(q, k, v, *self._gates(x), S, self.key_dim**-0.5)
        return self._output(o, x), LayerState(S, window)

    def conv_window(self, x: Tensor) -> Tensor:
        """The conv window after x [B, T', d], the last tokens of a piece's last document (what
        the conv of a piece continuing it needs first): a projection of those tokens only."""
        return tail_window(self.qkv_proj, x, self.window)
