"""Masked tile loads and stores, the building block of every Triton kernel here."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tile(base, rows, cols, stride_r, stride_c, r0, c0, BR: tl.constexpr, BCOL: tl.constexpr):
    """Pointers and bounds mask of the [BR, BCOL] tile at (r0, c0) of a rows × cols matrix."""
    r = r0 + tl.arange(0, BR)
    c = c0 + tl.arange(0, BCOL)
    return base + r[:, None] * stride_r + c[None, :] * stride_c, (r[:, None] < rows) & (c[None, :] < cols)


@triton.jit
def load(base, rows, cols, stride_r, stride_c, r0, c0, BR: tl.constexpr, BCOL: tl.constexpr):
    ptrs, mask = tile(base, rows, cols, stride_r, stride_c, r0, c0, BR, BCOL)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def store(base, rows, cols, stride_r, stride_c, r0, c0, BR: tl.constexpr, BCOL: tl.constexpr, value):
    ptrs, mask = tile(base, rows, cols, stride_r, stride_c, r0, c0, BR, BCOL)
    tl.store(ptrs, value.to(base.dtype.element_ty), mask=mask)
