"""ZeRO-style sharding applied from outside the model (torchtitan style): PyTorch FSDP2 or
DeepSpeed ZeRO 1-3.

Every rank is one data-parallel replica's shard, sequence-parallel or not: all ranks form
one sharding group, as in DeepSpeed-Ulysses and FlexSP. Stage 3 reshards parameters after
forward (only a shard is kept between layers); stage 2 keeps each block's parameters
unsharded from its forward to its backward. Gradients and optimizer state are sharded at
both stages. DeepSpeed: stage 1 shards optimizer state, 2 also gradients, 3 also parameters.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def reduce_replicated_gradients(model: nn.Module, loss: Tensor) -> float:
    """Engine ``none``: sum every gradient over the ranks, and the loss with them (one
    collective); return the global loss."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(grads[0].dtype)])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[-1].item()


def apply_fsdp2(model: nn.Module, stage: int, param_dtype: torch.dtype | None) -> nn.Module:
    """Shard every block, then the root (embeddings, final norm, head), in place.

    Gradients are summed, not averaged, across ranks: the trainer already divides each
    rank's loss by the global number of targets.
    """
    if stage not in (2, 3):
        raise ValueError(f"fsdp2 implements ZeRO stages 2 and 3, got {stage}")
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for block in model.blocks:
        fully_shard(block, mp_policy=mp, reshard_after_forward=stage == 3)
    fully_shard(model, mp_policy=mp, reshard_after_forward=stage == 3)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: what gloo (and NCCL) support
    return model


def local_numel(tensors) -> int:
    """Elements this rank stores: the local shard of a DTensor, all of a plain tensor."""
    return sum((t.to_local() if isinstance(t, DTensor) else t).numel() for t in tensors)


def optimizer_state_numel(optimizer: torch.optim.Optimizer) -> int:
    """Elements of per-parameter optimizer state (Adam's moments) this rank stores."""
    return local_numel(v for state in optimizer.state.values() for v in state.values() if v.dim() > 0)


def deepspeed_engine(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    stage: int,
    grad_clip: float,
    bf16: bool,
    load_universal: bool = False,
):
    """Wrap model, optimizer and schedule in a DeepSpeed ZeRO engine (process group already up).

    DeepSpeed averages gradients over ranks; the trainer scales each rank's loss by the world
    size so that the result is the sum it expects. ``load_universal``: the checkpoint to be
    loaded comes from another number of ranks, through DeepSpeed's universal format.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": grad_clip,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # our AdamW with its weight-decay groups
        "steps_per_print": 2**31,
        "checkpoint": {"load_universal": load_universal},
    }
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config, dist_init_required=False
    )
    return engine


def deepspeed_numel(engine) -> tuple[int, int]:
    """(parameter elements, optimizer-state elements) this rank stores under DeepSpeed."""
    params = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in engine.module.parameters())
    return params, optimizer_state_numel(engine.optimizer.optimizer)
