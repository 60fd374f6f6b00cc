"""RMSNorm that keeps only its input and one fp32 statistic per row for backward, and the
reference of the fused norm with a SiLU output gate (``norm_gate_triton.py``).

``y = x · rsqrt(mean(x²) + eps) · w``, computed in fp32 (fp64 for fp64 inputs) and returned in x's dtype, also under
autocast (with the residual stream in bf16, the projections reading the output then share
one saved copy). PyTorch's own ``rms_norm`` keeps fp32 copies of its input on CPU (its
composite path) but not on CUDA (its fused kernel); this one keeps the same on every device,
so what a model keeps is what ``baton memory`` predicts: x (shared with whatever else saved
it) and ``rstd``, 4 bytes per row. Backward recomputes the normalised rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs (tests)


class _RMSNorm(Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        xf = x.to(_compute_dtype(x))
        rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd * weight.to(xf.dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, rstd = ctx.saved_tensors
        normed = x.to(rstd.dtype) * rstd
        dyf = dy.to(rstd.dtype)
        d_weight = (dyf * normed).reshape(-1, x.shape[-1]).sum(0)
        d_normed = dyf * weight.to(rstd.dtype)
        dx = rstd * (d_normed - normed * (d_normed * normed).mean(-1, keepdim=True))
        return dx.to(x.dtype), d_weight.to(weight.dtype), None


def rms_norm(x: Tensor, weight: Tensor, eps: float | None) -> Tensor:
    """RMSNorm over x's last dim (eps None: x's dtype's epsilon, as ``nn.RMSNorm``)."""
    with torch.autocast(x.device.type, enabled=False):
        return _RMSNorm.apply(x, weight, torch.finfo(x.dtype).eps if eps is None else eps)


def norm_gate_ref(x: Tensor, gate: Tensor, weight: Tensor, eps: float | None, norm_first: bool) -> Tensor:
    """RMSNorm with a SiLU output gate: ``rms_norm(x) · silu(gate)`` (``norm_first``: GLA and
    Gated DeltaNet, per head) or ``rms_norm(x · silu(gate))`` (Mamba2's gated norm). Each op
    keeps what it keeps alone: the CPU path, and what the Triton kernel is tested against."""
    if norm_first:
        return rms_norm(x, weight, eps) * F.silu(gate)
    return rms_norm(x * F.silu(gate), weight, eps)
