"""One public function per scan op: the Triton kernel on CUDA tensors, the PyTorch reference
elsewhere. ``set_backend`` (config key ``train.kernels``) forces either."""

from __future__ import annotations

import os
from collections.abc import Callable

from torch import Tensor

from baton.kernels.gla_ref import chunk_gla_ref
from baton.kernels.ssd_ref import chunk_ssd_ref

BACKENDS = ("auto", "triton", "torch")
_backend = "auto"


def set_backend(name: str) -> None:
    """``auto``: Triton for CUDA tensors, the reference otherwise; ``triton`` / ``torch``: always."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    _backend = name


def _use_triton(x: Tensor) -> bool:
    if _backend == "torch" or (_backend == "auto" and not x.is_cuda):
        return False
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "kernel backend 'triton' needs CUDA tensors; set TRITON_INTERPRET=1 to run the kernels "
            "on CPU through Triton's interpreter (slow)"
        )
    return True


def _dispatching(reference: Callable, name: str, gates: str) -> Callable:
    def scan(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        g: Tensor,
        scale: float | None = None,
        initial_state: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        chunk_size: int = 64,
    ) -> tuple[Tensor, Tensor]:
        if _use_triton(q):
            from baton.kernels.scan_triton import chunk_scan_triton

            return chunk_scan_triton(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size)
        return reference(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size)

    scan.__name__ = scan.__qualname__ = name
    scan.__doc__ = f"Chunked {gates} scan: Triton on CUDA tensors, else :func:`{reference.__name__}` (same contract)."
    return scan


chunk_gla = _dispatching(chunk_gla_ref, "chunk_gla", "GLA (per-key-dim gates g [B, T, H, K])")
chunk_ssd = _dispatching(chunk_ssd_ref, "chunk_ssd", "SSD (scalar gates g [B, T, H])")
