"""Chunked-scan ops. Each public op dispatches to a Triton kernel on CUDA tensors and to the
plain PyTorch reference elsewhere (the reference is also the ground truth in tests);
``kernel_backend`` forces either for the work it encloses."""

from baton.kernels.attention_ref import cached_attention
from baton.kernels.backend import kernel_backend
from baton.kernels.conv import causal_conv1d, conv_step
from baton.kernels.delta_ref import chunk_delta_ref
from baton.kernels.dispatch import (
    add_state_correction,
    attention,
    chunk_delta,
    chunk_gla,
    chunk_ssd,
    delta_correction,
    delta_step,
    delta_summary,
    norm_gate,
    prefix_attention,
    recurrent_step,
    segment_summary,
)
from baton.kernels.gla_ref import chunk_gla_ref
from baton.kernels.naive import naive_delta_recurrence, naive_recurrence
from baton.kernels.ssd_ref import chunk_ssd_ref

__all__ = [
    "add_state_correction",
    "attention",
    "cached_attention",
    "causal_conv1d",
    "conv_step",
    "chunk_delta",
    "chunk_delta_ref",
    "chunk_gla",
    "chunk_gla_ref",
    "chunk_ssd",
    "chunk_ssd_ref",
    "delta_correction",
    "delta_step",
    "delta_summary",
    "kernel_backend",
    "naive_delta_recurrence",
    "naive_recurrence",
    "norm_gate",
    "prefix_attention",
    "recurrent_step",
    "segment_summary",
]
