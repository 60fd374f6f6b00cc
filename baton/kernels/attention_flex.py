"""The attention ops on GPU: PyTorch's FlexAttention, whose Triton kernels torch.compile
generates for a mask given as a function, with the documents' block-sparse layout from
``create_block_mask`` (blocks wholly outside a document are skipped, the ones wholly inside it
run unmasked). Chosen over SDPA, which takes such a mask only as a dense T × T tensor and
returns no log-sum-exp, and over flash-attn's varlen kernel, an extra dependency that has no
prefix of keys a document continues; FlexAttention has both, grouped-query heads, and a
backward. Its speed against the reference is what ``bash bench/gpu_check.sh hybrid`` measures.

CUDA only (``registry.py``: ``cuda_only``): on CPU FlexAttention runs an unfused forward and
has no backward, so the CPU path is the reference, and the tests compare this forward with
it there (``tests/kernels/test_attention_flex.py``), forward and backward on a GPU.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

from baton.kernels.attention_ref import _document_ids


@functools.cache
def _compiled_flex():
    # dynamic: a rank's piece has another length every step
    return torch.compile(flex_attention, dynamic=True)


def _flex(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
    """[B, H, T, D] layouts; the output and the log-sum-exp (natural log)."""
    run = _compiled_flex() if q.is_cuda else flex_attention
    o, aux = run(q, k, v, enable_gqa=q.shape[1] != k.shape[1], return_aux=AuxRequest(lse=True), **kwargs)
    return o, aux.lse


def _heads_first(x: Tensor) -> Tensor:
    return x.transpose(1, 2)


def attention_flex(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor | None = None,
    prefix_k: Tensor | None = None,
    prefix_v: Tensor | None = None,
    scale: float | None = None,
    block: int = 128,
) -> tuple[Tensor, Tensor]:
    """:func:`~baton.kernels.attention_ref.attention_ref`'s contract (``block``: the mask's
    block size, FlexAttention's tile)."""
    T = q.shape[1]
    if prefix_k is not None:
        k, v = torch.cat([prefix_k, k], dim=1), torch.cat([prefix_v, v], dim=1)
    P = k.shape[1] - T
    doc = _document_ids(T, cu_seqlens, q.device)
    key_doc = torch.cat([doc.new_zeros(P), doc])

    def causal_in_document(b, h, query, key):
        return (doc[query] == key_doc[key]) & (key - P <= query)

    mask = create_block_mask(
        causal_in_document, None, None, T, P + T, device=q.device, BLOCK_SIZE=block, _compile=q.is_cuda
    )
    o, lse = _flex(_heads_first(q), _heads_first(k), _heads_first(v), block_mask=mask, scale=scale)
    return _heads_first(o).to(v.dtype), _heads_first(lse).float()


def prefix_attention_flex(
    q: Tensor, prefix_k: Tensor, prefix_v: Tensor, scale: float | None = None, block: int = 128
) -> tuple[Tensor, Tensor]:
    """:func:`~baton.kernels.attention_ref.prefix_attention`'s contract: every query sees every
    prefix key (no mask)."""
    o, lse = _flex(_heads_first(q), _heads_first(prefix_k), _heads_first(prefix_v), scale=scale)
    return _heads_first(o).to(prefix_v.dtype), _heads_first(lse).float()
