"""Recompute-in-backward for the reference ops: an op keeps only its inputs, and its backward
runs it again and differentiates that run (what activation checkpointing does, per op). The
references' einsums would otherwise keep copies of their operands whose number and size
depend on torch's einsum internals; this way the CPU path keeps what ``baton memory``
predicts, at the cost of one more forward of the op. (``torch.utils.checkpoint`` does the
same but imports torch._dynamo at its first call, a second per process.)

:func:`rerun_vjp` is the one re-run-and-VJP step, used by :class:`Recomputed` (eager ops) and
by the custom op ``baton::scan_ref``'s backward (``ops.py``), which ``torch.compile`` sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor
from torch.autograd import Function


def rerun_vjp(
    fn: Callable,
    args: Sequence,
    wanted: Sequence[int],
    grads: Sequence[Tensor | None],
    context: AbstractContextManager | None = None,
    materialize: bool = False,
) -> list[Tensor | None]:
    """``fn(*args)`` again with ``args[i]`` for ``i`` in ``wanted`` as fresh leaves, and the
    gradients of those inputs given the outputs' ``grads`` (None: that output has none); None
    at the other positions (zeros with ``materialize`` where an input got no gradient)."""
    args = list(args)
    for i in wanted:
        args[i] = args[i].detach().requires_grad_()
    with context or nullcontext(), torch.enable_grad():
        outputs = fn(*args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
    found = torch.autograd.grad(
        [o for o, _ in pairs], [args[i] for i in wanted], [g for _, g in pairs],
        allow_unused=True, materialize_grads=materialize,
    )  # fmt: skip
    result: list[Tensor | None] = [None] * len(args)
    for i, grad in zip(wanted, found):
        result[i] = grad
    return result


class Recomputed(Function):
    """A reference op that keeps only its inputs for backward and runs again there, under the
    autocast state of its forward."""

    @staticmethod
    def forward(ctx, fn: Callable, *args):
        ctx.fn, ctx.tensors = fn, [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        ctx.others = [None if isinstance(a, Tensor) else a for a in args]
        ctx.save_for_backward(*(args[i] for i in ctx.tensors))
        device = args[ctx.tensors[0]].device.type
        ctx.autocast = device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        with torch.no_grad():
            return fn(*args)

    @staticmethod
    def backward(ctx, *grads):
        args = list(ctx.others)
        for i, t in zip(ctx.tensors, ctx.saved_tensors):
            args[i] = t
        wanted = [i for i in ctx.tensors if ctx.needs_input_grad[i + 1]]
        device, enabled, dtype = ctx.autocast
        return None, *rerun_vjp(ctx.fn, args, wanted, grads, torch.autocast(device, dtype=dtype, enabled=enabled))


def recomputed(fn: Callable, *args) -> Tensor | tuple[Tensor, ...]:
    """``fn(*args)``, keeping only its inputs for backward where autograd records."""
    return Recomputed.apply(fn, *args) if torch.is_grad_enabled() else fn(*args)
