"""Rotary position embedding on a fraction of each head's dims (Qwen3-Next / Qwen3.5's partial
rotary), at each token's position within its document."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def document_positions(cu_seqlens: Tensor | None, T: int, first_offset: int = 0) -> Tensor:
    """Each token's position within its document [T] (long): a packed stream restarts at every
    document start; its first document, continuing ``first_offset`` tokens held elsewhere,
    starts there."""
    positions = torch.arange(T)
    if cu_seqlens is None:
        return positions + first_offset
    bounds = cu_seqlens.tolist()
    starts = torch.tensor(bounds[:-1])
    lengths = torch.tensor(bounds[1:]) - starts
    offsets = (starts - torch.tensor([first_offset] + [0] * (len(bounds) - 2))).repeat_interleave(lengths)
    return positions - offsets


class Rotary(nn.Module):
    """Rotates the first ``dims`` of a head's ``head_dim`` in pairs (i, i + dims/2), the
    "rotate half" layout; the rest pass through. No parameters: the frequencies are a buffer
    recomputed from the config, not saved."""

    def __init__(self, dims: int, theta: float) -> None:
        super().__init__()
        self.dims = dims
        inv_freq = 1.0 / theta ** (torch.arange(0, dims, 2, dtype=torch.float64) / max(dims, 1))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x [B, T, H, D] at ``positions`` [T] (or [B, T]): x rotated, in x's dtype."""
        if not self.dims:
            return x
        angles = positions.to(self.inv_freq.device, torch.float32)[..., None] * self.inv_freq  # [(B,) T, dims/2]
        cos, sin = angles.cos(), angles.sin()
        if cos.dim() == 2:
            cos, sin = cos[None], sin[None]
        cos, sin = cos[:, :, None].to(x.dtype), sin[:, :, None].to(x.dtype)
        rot, rest = x[..., : self.dims], x[..., self.dims :]
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return torch.cat([rotated, rest], dim=-1)
