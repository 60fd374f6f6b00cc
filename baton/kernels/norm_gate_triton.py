"""RMSNorm with a SiLU output gate in one pass, forward and backward (the GPU path of
``norm_gate_ref.py:norm_gate_ref``).

Eagerly, ``rms_norm(x) · silu(gate)`` is four kernels over the activations (the norm, the
SiLU, the product, and a cast), and autograd keeps the norm's output and the SiLU's besides
the inputs. Here one program normalises a block of rows at a time in registers: forward reads
x, the gate and the weight and writes the output and one fp32 statistic per row; backward
reads them again with the output's gradient and writes dx, d_gate and a per-program partial
of the weight's gradient (summed over programs afterwards). Kept for backward: x, the gate
and the statistic, as the reference keeps them apart from its two intermediates.

``norm_first``: ``rms_norm(x) · silu(g)`` (GLA, Gated DeltaNet: per head); otherwise
``rms_norm(x · silu(g))`` (Mamba2's gated norm, over the whole inner width). fp32 inside;
the output in the dtype x and the gate promote to.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

ROWS = 16  # rows per program: the weight's gradient is summed in registers over them


@triton.jit
def _norm_gate_forward_kernel(
    X, G, W, Y, RSTD, n_rows, eps, N: tl.constexpr, BN: tl.constexpr, ROWS: tl.constexpr, NORM_FIRST: tl.constexpr
):
    cols = tl.arange(0, BN)
    in_row = cols < N
    w = tl.load(W + cols, mask=in_row, other=0.0).to(tl.float32)
    for i in range(ROWS):
        row = tl.program_id(0).to(tl.int64) * ROWS + i
        if row < n_rows:
            x = tl.load(X + row * N + cols, mask=in_row, other=0.0).to(tl.float32)
            g = tl.load(G + row * N + cols, mask=in_row, other=0.0).to(tl.float32)
            silu = g * tl.sigmoid(g)
            h = x if NORM_FIRST else x * silu
            rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / N + eps)
            y = h * rstd * w
            if NORM_FIRST:
                y = y * silu
            tl.store(Y + row * N + cols, y.to(Y.dtype.element_ty), mask=in_row)
            tl.store(RSTD + row, rstd)


@triton.jit
def _norm_gate_backward_kernel(
    X, G, W, RSTD, DY, DX, DG, DW, n_rows,
    N: tl.constexpr, BN: tl.constexpr, ROWS: tl.constexpr, NORM_FIRST: tl.constexpr,
):  # fmt: skip
    cols = tl.arange(0, BN)
    in_row = cols < N
    w = tl.load(W + cols, mask=in_row, other=0.0).to(tl.float32)
    dw = tl.zeros([BN], dtype=tl.float32)
    for i in range(ROWS):
        row = tl.program_id(0).to(tl.int64) * ROWS + i
        if row < n_rows:
            x = tl.load(X + row * N + cols, mask=in_row, other=0.0).to(tl.float32)
            g = tl.load(G + row * N + cols, mask=in_row, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * N + cols, mask=in_row, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            sig = tl.sigmoid(g)
            silu = g * sig
            d_silu = sig * (1.0 + g * (1.0 - sig))
            h = x if NORM_FIRST else x * silu
            normed = h * rstd
            d_out = dy * silu if NORM_FIRST else dy  # gradient of normed · w
            dw += d_out * normed
            d_normed = d_out * w
            dh = rstd * (d_normed - normed * tl.sum(d_normed * normed, axis=0) / N)
            if NORM_FIRST:
                dx = dh
                dg = dy * normed * w * d_silu
            else:
                dx = dh * silu
                dg = dh * x * d_silu
            tl.store(DX + row * N + cols, dx.to(DX.dtype.element_ty), mask=in_row)
            tl.store(DG + row * N + cols, dg.to(DG.dtype.element_ty), mask=in_row)
    tl.store(DW + tl.program_id(0).to(tl.int64) * N + cols, dw, mask=in_row)


def _rows(x: Tensor) -> tuple[int, int, int]:
    N = x.shape[-1]
    return x.numel() // N, N, triton.next_power_of_2(N)


def norm_gate_forward(x: Tensor, gate: Tensor, weight: Tensor, eps: float, norm_first: bool) -> tuple[Tensor, Tensor]:
    """The output (x's shape, the dtype x and the gate promote to, as the reference's product)
    and the statistic of every row [rows] fp32."""
    n_rows, N, BN = _rows(x)
    x, gate = x.contiguous(), gate.contiguous()
    y = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(x.dtype, gate.dtype))
    rstd = torch.empty(n_rows, device=x.device, dtype=torch.float32)
    _norm_gate_forward_kernel[(triton.cdiv(n_rows, ROWS),)](
        x, gate, weight, y, rstd, n_rows, eps, N=N, BN=BN, ROWS=ROWS, NORM_FIRST=norm_first
    )
    return y, rstd


def norm_gate_backward(
    x: Tensor, gate: Tensor, weight: Tensor, rstd: Tensor, dy: Tensor, norm_first: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of x, the gate and the weight (each in its input's dtype)."""
    n_rows, N, BN = _rows(x)
    x, gate, dy = x.contiguous(), gate.contiguous(), dy.contiguous()
    programs = triton.cdiv(n_rows, ROWS)
    dx, dg = torch.empty_like(x), torch.empty_like(gate)
    dw = torch.empty(programs, N, device=x.device, dtype=torch.float32)
    _norm_gate_backward_kernel[(programs,)](
        x, gate, weight, rstd, dy, dx, dg, dw, n_rows, N=N, BN=BN, ROWS=ROWS, NORM_FIRST=norm_first
    )
    return dx, dg, dw.sum(0).to(weight.dtype)
