"""Short causal depthwise convolution over packed documents (the Mamba2 / SSD pre-scan conv).

A token never sees a token of another document. ``left_context`` supplies the tokens just
before the stream (a sequence-parallel halo): the stream's first document then continues
through them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def positions_in_document(n_tokens: int, cu_seqlens: Tensor | None, device: torch.device) -> Tensor:
    """Index of every token inside its own document: [T] long."""
    if cu_seqlens is None:
        return torch.arange(n_tokens, device=device)
    cu = cu_seqlens.to(device, torch.long)
    tokens = torch.arange(n_tokens, device=device)
    # each token's document: the last one starting at or before it (shapes that do not
    # depend on cu_seqlens' values, so torch.compile traces this without a break)
    document = torch.searchsorted(cu, tokens, right=True) - 1
    return tokens - cu[document]


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    left_context: Tensor | None = None,
) -> Tensor:
    """x: [B, T, D]; weight: [D, W]; left_context: [B, W-1, D] or None. Returns [B, T, D].

    ``out_t = bias + sum_j weight[:, W-1-j] * x_{t-j}`` over taps ``j`` that stay inside
    the token's document.
    """
    B, T, D = x.shape
    W = weight.shape[1]
    pos = positions_in_document(T, cu_seqlens, x.device)
    if left_context is None:
        x_ext = F.pad(x, (0, 0, W - 1, 0))
    else:
        x_ext = torch.cat([left_context.to(x.dtype), x], dim=1)
        first_doc = pos == torch.arange(T, device=x.device)
        pos = torch.where(first_doc, pos + W - 1, pos)
    out = x * weight[:, W - 1] if bias is None else x * weight[:, W - 1] + bias
    for j in range(1, W):
        tap = x_ext[:, W - 1 - j : W - 1 - j + T] * weight[:, W - 1 - j]
        out = out + tap * (pos >= j)[None, :, None]
    return out


def conv_step(x: Tensor, window: Tensor | None, weight: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token of :func:`causal_conv1d` for B streams (decoding): x [B, D] and the window of
    the last W - 1 inputs [B, W - 1, D] (None: zeros). The output [B, D] and the next window."""
    if window is None:
        window = x.new_zeros(x.shape[0], weight.shape[1] - 1, x.shape[1])
    taps = torch.cat([window.to(x.dtype), x[:, None]], dim=1)  # [B, W, D], oldest first
    out = (taps * weight.T).sum(1)
    return (out if bias is None else out + bias), taps[:, 1:]
