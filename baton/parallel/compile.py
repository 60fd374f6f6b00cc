"""``train.compile``: ``torch.compile`` per block, applied from outside like the other wrappers
(``parallelize``: after sequence parallelism, before checkpointing and sharding).

A block compiles into one graph: the scans are custom ops (``kernels/ops.py``) that the
compiler treats as opaque nodes, and everything around them (norms, gates, the conv, the
MLP) is fused by Inductor. What cannot be traced is fenced off with ``torch.compiler.disable``
and runs eagerly between the compiled graphs: a relaying scan or conv under sequence
parallelism (messages, threads), the carrying ops of sequence micro-batches, and a
checkpointed mixer, which is compiled on its own and recomputed as a whole.

The first steps pay the compilation (tens of seconds per block shape on a CPU, minutes on a
GPU with autotuning; later steps with a new number of documents recompile once, with
dynamic shapes from then on).
"""

from __future__ import annotations

import torch
from torch import nn


def compile_blocks(model: nn.Module, activation_checkpoint: str) -> None:
    """Compile every block's forward in place (parameter names unchanged); under
    ``activation_checkpoint=mixer`` each mixer's forward too, as checkpointing will fence it
    off from its block's graph."""
    allow_data_dependent_sizes()
    for block in model.blocks:
        if activation_checkpoint == "mixer":
            block.mixer.forward = torch.compile(block.mixer.forward)
        block.forward = torch.compile(block.forward)


def allow_data_dependent_sizes() -> None:
    """Let a graph hold ops whose output sizes depend on tensor values: the Triton scan's
    chunk-layout outputs (a size the tracer cannot know; they only pass to its backward op).
    Without this, dynamo breaks the graph at every Triton scan."""
    torch._dynamo.config.capture_dynamic_output_shape_ops = True
