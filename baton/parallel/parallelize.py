"""Everything that wraps the plain model from outside, in one place and a fixed order (as
torchtitan's ``parallelize``). The model code knows nothing of it.

1. Sequence parallelism: every token mixer's scan (and the SSD conv) is swapped for a
   relaying one that reads the step's plan (``parallel/sequence.py``); all ranks start from
   rank 0's weights. With micro-batches the blocks relay themselves (step 4) instead.
2. ``torch.compile`` per block (``parallel/compile.py``), with ``train.compile``.
3. Activation checkpointing (``parallel/recompute.py``): blocks or mixers recomputed in
   backward, their relay ops replaying what they received.
4. Sequence micro-batches (``parallel/microbatch.py``): each block runs over the piece in
   slices carrying the state, each slice recomputed in backward under step 3's policy.
5. Sharding, last, as it must see the final modules: FSDP2 (``fully_shard`` per block, then
   the root), or a DeepSpeed ZeRO engine, which also takes the optimizer and schedule (built
   by the caller's ``make_optimizer`` over the final modules: the trainer owns them).

The result, :class:`ParallelModel`, is what a training step drives: backward, the gradient
reduction and the optimizer step, the same three calls whatever the engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from baton.dist.env import DistEnv, sum_over_ranks
from baton.parallel.compile import compile_blocks
from baton.parallel.microbatch import apply_micro_batches
from baton.parallel.recompute import apply_activation_checkpointing
from baton.parallel.sequence import SequenceParallel, apply_sequence_parallel
from baton.parallel.zero import apply_fsdp2, deepspeed_engine, reduce_replicated_gradients

if TYPE_CHECKING:
    from baton.config import Config

# The optimizer and learning-rate schedule over the final (wrapped, sharded) model.
OptimizerFactory = Callable[[nn.Module], tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]]


@dataclass
class ParallelModel:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sp: SequenceParallel
    env: DistEnv
    engine: str  # none | fsdp2 | deepspeed; one process runs unsharded whatever the config says
    deepspeed: object | None = None  # the DeepSpeed engine, for engine == "deepspeed"

    def backward(self, loss: Tensor) -> None:
        if self.deepspeed is not None:  # DeepSpeed averages over ranks; each rank's loss is a share of the sum
            self.deepspeed.backward(loss * self.env.world_size)
        else:
            loss.backward()

    def reduce_gradients(self, loss: Tensor) -> float:
        """Sum gradients over ranks (sharded engines reduce their own during backward) and
        return the global loss."""
        if not self.env.distributed:
            return loss.item()
        if self.engine == "none":
            return reduce_replicated_gradients(self.model, loss)
        return sum_over_ranks([loss.item()])[0]

    def optimizer_step(self, max_norm: float, check_norm: Callable[[float | None], None]) -> float | None:
        """Clip the gradients to ``max_norm`` (0: off) and step optimizer and schedule; return
        the norm before clipping. ``check_norm`` sees it first and raises to keep the weights
        as they are. DeepSpeed clips inside its own step, so its norm is known only after it."""
        if self.deepspeed is not None:  # clips, steps optimizer and schedule, zeroes grads
            self.deepspeed.step()
            norm = self.deepspeed.get_global_grad_norm()
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm or math.inf)
            norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        norm = None if norm is None else float(norm)
        check_norm(norm)
        if self.deepspeed is None:
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return norm


def parallelize(
    model: nn.Module,
    cfg: Config,
    env: DistEnv,
    param_dtype: torch.dtype | None,
    make_optimizer: OptimizerFactory,
    load_universal: bool = False,
) -> ParallelModel:
    """Apply, in order, what ``cfg.parallel`` asks for to ``model`` (in place), and build the
    optimizer and schedule over the result with ``make_optimizer``. ``param_dtype``: the
    compute dtype of sharded parameters (bf16 autocast runs), None for fp32.
    ``load_universal``: a DeepSpeed run that will resume from a checkpoint of another world size."""
    p = cfg.parallel.sp
    sp = SequenceParallel(env.rank, env.world_size, p.relay, p.relay_blocks, p.overlap)
    engine = cfg.parallel.zero.engine if env.distributed else "none"
    micro_tokens = cfg.train.micro_tokens
    if env.distributed:
        if not micro_tokens:
            apply_sequence_parallel(model, sp)
        for p in model.parameters():
            dist.broadcast(p.data, 0)
    if cfg.train.compile:
        compile_blocks(model, cfg.train.activation_checkpoint)
    apply_activation_checkpointing(model, cfg.train.activation_checkpoint, sp.record)
    if micro_tokens:
        apply_micro_batches(model, sp, micro_tokens, cfg.model.chunk_size)
    if engine == "fsdp2":
        apply_fsdp2(model, cfg.parallel.zero.stage, param_dtype)
    optimizer, scheduler = make_optimizer(model)
    ds = None
    if engine == "deepspeed":
        ds = deepspeed_engine(
            model, optimizer, scheduler, cfg.parallel.zero.stage, cfg.optim.grad_clip,
            param_dtype == torch.bfloat16, load_universal,
        )  # fmt: skip
    return ParallelModel(model, optimizer, scheduler, sp, env, engine, ds)
