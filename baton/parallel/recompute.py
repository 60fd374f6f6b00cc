"""Activation checkpointing, applied to the model from outside (``parallelize``: after
sequence parallelism, before sharding, as torchtitan orders it).

``train.activation_checkpoint``:

- ``none``: autograd keeps every activation until backward.
- ``full``: each block keeps only its input; its forward runs again in backward (one more
  forward of every block per step).
- ``mixer``: each block's token mixer keeps only its input and is recomputed (projections,
  gates, the scan, the output norm: most of a block's activations, about a third of its
  forward FLOPs); the MLP's activations are kept. ``bench/memory.py`` measures the trade.

Non-reentrant ``torch.utils.checkpoint`` on the module's own ``forward`` (patched in place, so
parameter names and checkpoints are the same under every policy). Under sequence parallelism
a recomputed module contains relay ops: they replay what they received in the first forward
(``parallel/relay.py:RelayRecord``) instead of communicating again, and backward runs the
first forward's nodes, so each step's relay messages and bytes are the same with and without
checkpointing.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from baton.config import POLICIES
from baton.parallel.relay import RelayRecord


def recompute_in_backward(module: nn.Module, record: RelayRecord) -> None:
    """Run ``module``'s forward under activation checkpointing from now on (in place)."""
    forward = module.forward

    @torch.compiler.disable  # a compiled block calls a checkpointed mixer eagerly (compiled on its own)
    def checkpointed(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, context_fn=record.checkpoint_contexts, **kwargs)

    module.forward = checkpointed


def apply_activation_checkpointing(model: nn.Module, policy: str, record: RelayRecord) -> None:
    """Checkpoint every block (``full``) or every block's mixer (``mixer``) of ``model``."""
    if policy not in POLICIES:
        raise ValueError(f"train.activation_checkpoint must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "none":
        return
    for block in model.blocks:
        recompute_in_backward(block if policy == "full" else block.mixer, record)
