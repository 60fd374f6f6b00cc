"""The model's RMSNorm modules: ``nn.RMSNorm``'s parameters with the memory contract of
:func:`baton.kernels.norm_gate_ref.rms_norm` (its input and one fp32 statistic per row kept), and the
norm with a SiLU output gate, one fused kernel on the Triton path."""

from __future__ import annotations

from torch import Tensor, nn

from baton.kernels import norm_gate
from baton.kernels.norm_gate_ref import rms_norm

__all__ = ["GatedRMSNorm", "RMSNorm", "rms_norm"]


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (same parameters, same state dict) with the memory contract above."""

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class GatedRMSNorm(RMSNorm):
    """``norm(x) · silu(gate)`` (``norm_first``) or ``norm(x · silu(gate))``; the same
    parameters and state dict as :class:`RMSNorm`."""

    def __init__(self, dim: int, eps: float | None, norm_first: bool) -> None:
        super().__init__(dim, eps=eps)
        self.norm_first = norm_first

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        return norm_gate(x, gate, self.weight, self.eps, self.norm_first)
