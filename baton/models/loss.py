"""Next-token cross-entropy: plain (from logits), or fused with the final norm and the LM head
so that the logits never exist for all tokens at once.

The fused loss walks the tokens in chunks. Forward, per chunk: norm, head, the fp32
log-sum-exp over the vocabulary, the target's logit; only the chunk's logits are ever alive.
It keeps for backward the head's input (the residual stream), the fp32 log-sum-exp and the
labels: about ``2 d + 12`` bytes per token in bf16, where the logits, their fp32 copy and the
cross-entropy's own buffers took ``~10 V`` (190 KiB per token at V = 32000). Backward, per
chunk: the logits again (the same ops under the same autocast state, so the same values),
``softmax - onehot``, then the gradients of the chunk's input and of the norm's and head's
weights, the weights' accumulated over chunks in fp32.

Written here rather than taken from a library: Liger-Kernel's fused linear cross-entropy and
Apple's cut-cross-entropy are Triton-only (no CPU path, which baton's tests and references
need), and neither fuses the final norm, which the issue's memory target needs (its fp32
output would be kept otherwise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function

from baton.models.norm import rms_norm

IGNORE = -100


def token_losses(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy (fp32) over labels != -100, and the count of such labels."""
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss, (labels != IGNORE).sum()


def _chunk_logits(x: Tensor, norm_weight: Tensor, eps: float | None, head_weight: Tensor) -> Tensor:
    """fp32 logits of the final norm and head over a chunk of the residual stream."""
    return F.linear(rms_norm(x, norm_weight, eps), head_weight).float()


class _FusedHeadLoss(Function):
    @staticmethod
    def forward(ctx, x, norm_weight, head_weight, labels, eps, chunk):
        device = x.device.type
        ctx.autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        ctx.eps, ctx.chunk = eps, chunk
        lse = x.new_empty(x.shape[0], dtype=torch.float32)
        total = x.new_zeros((), dtype=torch.float32)
        for a in range(0, x.shape[0], chunk):
            logits = _chunk_logits(x[a : a + chunk], norm_weight, eps, head_weight)
            lse[a : a + chunk] = logits.logsumexp(-1)
            target = labels[a : a + chunk]
            picked = logits.gather(1, target.clamp(min=0)[:, None])[:, 0]
            total += ((lse[a : a + chunk] - picked) * (target != IGNORE)).sum()
        ctx.save_for_backward(x, norm_weight, head_weight, labels, lse)
        return total

    @staticmethod
    def backward(ctx, grad):
        x, norm_weight, head_weight, labels, lse = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        dx = torch.empty_like(x)
        d_norm = torch.zeros_like(norm_weight, dtype=torch.float32)
        d_head = torch.zeros_like(head_weight, dtype=torch.float32)
        weights = [w.detach().requires_grad_() for w in (norm_weight, head_weight)]
        for a in range(0, x.shape[0], ctx.chunk):
            x_c = x[a : a + ctx.chunk].detach().requires_grad_()
            with torch.enable_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=enabled):
                logits = _chunk_logits(x_c, weights[0], ctx.eps, weights[1])
            target = labels[a : a + ctx.chunk]
            valid = target != IGNORE
            d_logits = (logits.detach() - lse[a : a + ctx.chunk, None]).exp()
            d_logits[valid, target[valid]] -= 1
            d_logits *= (valid * grad)[:, None]
            g_x, g_norm, g_head = torch.autograd.grad(logits, (x_c, *weights), d_logits)
            dx[a : a + ctx.chunk] = g_x
            d_norm += g_norm
            d_head += g_head
        return dx, d_norm.to(norm_weight.dtype), d_head.to(head_weight.dtype), None, None, None


def fused_head_loss(x: Tensor, norm: nn.RMSNorm, head_weight: Tensor, labels: Tensor, chunk: int) -> Tensor:
    """Summed cross-entropy of ``head(norm(x))`` against ``labels`` (-100: no target), over
    chunks of ``chunk`` tokens. x: [..., T, d] (flattened), labels: [..., T]."""
    d = x.shape[-1]
    return _FusedHeadLoss.apply(x.reshape(-1, d), norm.weight, head_weight, labels.reshape(-1), norm.eps, chunk)
