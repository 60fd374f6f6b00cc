"""What one rank holds in memory, before anything is allocated: ``baton memory`` prints it, and
the trainer uses it to cap the tokens the planner gives each rank and to refuse, on a GPU, a
config that cannot fit.

Per rank, for a model of N parameters, P ranks, ``p`` bytes per compute-dtype element (2 in
bf16, 4 in fp32):

- engine states: ``none`` keeps fp32 weights, gradients and Adam's two moments (16 N) and,
  under bf16 autocast, autocast's bf16 copy of every weight from forward to backward (2 N);
  ``fsdp2`` shards those 16 N over the ranks and holds the unsharded compute copies of the
  blocks in flight (stage 3: two in forward, one more with its gradient in backward; stage 2:
  every block from forward to backward) and of the root (embedding, head) throughout;
  ``deepspeed`` follows the ZeRO paper: bf16 weights and gradients plus 12 N of fp32 master
  weights and moments, partitioned from stage 1 (optimizer state), 2 (+ gradients) and 3
  (+ weights), with its gradient bucket;
- activations: ``models/memory.py``'s bytes per token (checked against exact counts) for the
  rank's tokens, the recomputation of one layer (over ``train.micro_tokens`` tokens, or the
  whole piece) and the loss's logits chunk;
- a reserve for the CUDA context, communication buffers and allocator slack (on a GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from baton.config import Config, ConfigError
from baton.models.flops import count_parameters, scan_shape
from baton.models.memory import ActivationBytes, activation_bytes, attention_workspace, kv_bytes

GIB = 2**30
GPU_RESERVE = int(1.5 * GIB)
DEEPSPEED_BUCKET = 500_000_000  # elements: DeepSpeed's default reduce and all-gather bucket size


def _block_parameters(cfg: Config) -> tuple[int, int]:
    """(parameters of one block, parameters outside the blocks)."""
    total, m = count_parameters(cfg.model), cfg.model
    root = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2) + m.d_model
    return (total - root) // m.n_layers, root  # a hybrid's: the mean block


def engine_state_bytes(cfg: Config, world: int, p: int) -> dict[str, int]:
    """Bytes per rank of weights, gradients and optimizer state under ``cfg.parallel.zero``."""
    N = count_parameters(cfg.model)
    block, root = _block_parameters(cfg)
    engine, stage = (cfg.parallel.zero.engine, cfg.parallel.zero.stage) if world > 1 else ("none", 0)
    if engine == "fsdp2":
        in_flight = root + (cfg.model.n_layers * block if stage == 2 else 3 * block)
        return {"weights": 4 * N // world + p * in_flight, "gradients": 4 * N // world + (p + 4) * block,
                "optimizer": 8 * N // world}  # fmt: skip
    if engine == "deepspeed":
        master = 4 * N if p == 2 else 0  # fp32 masters beside bf16 weights; in fp32 the weights are the masters
        shard = [1, 1, world if stage >= 2 else 1, world if stage >= 3 else 1]
        return {"weights": p * N // shard[3] + (p * (2 * block + root) if stage == 3 else 0),
                "gradients": p * N // shard[2] + p * min(DEEPSPEED_BUCKET, N),
                "optimizer": (master + 8 * N) // world}  # fmt: skip
    return {"weights": 4 * N + (2 * N if p == 2 else 0), "gradients": 4 * N, "optimizer": 8 * N}


@dataclass
class MemoryBudget:
    """One rank's memory for a config on a device of ``device_bytes`` (0: no limit known)."""

    cfg: Config
    world: int
    device_bytes: int
    gpu: bool = True

    @property
    def p(self) -> int:
        return 4 if self.cfg.train.dtype == "fp32" else 2

    @property
    def activations(self) -> ActivationBytes:
        t = self.cfg.train
        path = "reference" if t.kernels == "torch" else "triton"
        return activation_bytes(self.cfg.model, t.activation_checkpoint, self.p, path, t.loss_chunk_tokens > 0)

    @property
    def states(self) -> dict[str, int]:
        return engine_state_bytes(self.cfg, self.world, self.p)

    @property
    def reserve(self) -> int:
        return GPU_RESERVE if self.gpu else 0

    @property
    def kept_per_token(self) -> int:
        """Activation bytes kept per token of the rank's piece, all layers and the head."""
        acts = self.activations
        return acts.layers + acts.head_loss

    def workspace(self, tokens: int, micro_tokens: int) -> int:
        """Transient bytes: one layer's backward over a slice (or the piece), the loss's
        logits over a chunk (or every token), and the states carried between slices (an
        attention layer's: the keys and values of the slices before); a hybrid's attention
        backward over one query block that sees the whole piece, and the keys and values of a
        document continued from earlier ranks, up to one piece long."""
        m, t, acts = self.cfg.model, self.cfg.train, self.activations
        in_flight = min(tokens, micro_tokens) if micro_tokens else tokens
        logits = min(tokens, t.loss_chunk_tokens) if t.loss_chunk_tokens else tokens
        H, K, V = scan_shape(m)
        recurrent = m.n_layers - m.layer_mixers.count("attn")
        carried = (math.ceil(tokens / micro_tokens) if micro_tokens else 0) * recurrent * 4 * H * K * V
        carried += kv_bytes(m, tokens, self.p) if micro_tokens else 0
        attention = attention_workspace(m, 2 * tokens) + kv_bytes(m, tokens, self.p)
        return in_flight * acts.layer_backward + logits * m.vocab_size * (self.p + 8) + carried + attention

    def total(self, tokens: int, micro_tokens: int | None = None) -> int:
        micro = self.cfg.train.micro_tokens if micro_tokens is None else micro_tokens
        return sum(self.states.values()) + tokens * self.kept_per_token + self.workspace(tokens, micro) + self.reserve

    def max_tokens(self, micro_tokens: int | None = None) -> int:
        """The most tokens per rank that fit (0 if not even one; no limit known: a huge number)."""
        if not self.device_bytes:
            return 2**62
        lo, hi = 0, 1
        while self.total(hi, micro_tokens) <= self.device_bytes and hi < 2**40:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.total(mid, micro_tokens) <= self.device_bytes else (lo, mid)
        return lo

    def max_micro_tokens(self, tokens: int) -> int:
        """The largest ``train.micro_tokens`` (a multiple of the chunk size) with which ``tokens``
        per rank fit; ``tokens`` rounded up if the whole piece fits; 0 if none does."""
        chunk = self.cfg.model.chunk_size
        if self.total(tokens, 0) <= self.device_bytes or not self.device_bytes:
            return -(-tokens // chunk) * chunk
        best = 0
        lo, hi = 1, -(-tokens // chunk)
        while lo <= hi:
            mid = (lo + hi) // 2
            if self.total(tokens, mid * chunk) <= self.device_bytes:
                best, lo = mid * chunk, mid + 1
            else:
                hi = mid - 1
        return best


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def report(budget: MemoryBudget, tokens: int) -> str:
    """``baton memory``'s table: what one rank holds with ``tokens`` tokens, and what fits."""
    cfg, acts = budget.cfg, budget.activations
    t, z = cfg.train, cfg.parallel.zero
    engine = z.engine + (f" stage {z.stage}" if z.engine != "none" and budget.world > 1 else "")
    micro = t.micro_tokens
    in_flight = min(tokens, micro) if micro else tokens
    attention = ", attention" if "attn" in budget.cfg.model.layer_mixers else ""
    rows = [
        *budget.states.items(),
        (f"activations kept ({tokens} tokens)", tokens * budget.kept_per_token),
        (
            f"workspace (a layer's backward over {in_flight} tokens, loss logits{attention})",
            budget.workspace(tokens, micro),
        ),
        ("reserve (CUDA context, buffers, allocator)", budget.reserve),
        ("total", budget.total(tokens)),
    ]
    lines = [
        f"one rank of {budget.world}: {engine}, {'bf16' if budget.p == 2 else 'fp32'}, train.activation_checkpoint="
        f"{t.activation_checkpoint}, train.micro_tokens={micro}, {tokens} tokens",
        *(f"  {name:<62}{n / GIB:9.2f} GiB" for name, n in rows),
        f"  activation bytes per token: {acts.per_layer} per layer, {acts.head_loss} for the head and loss",
    ]
    if not budget.device_bytes:
        return "\n".join(lines)
    fits = budget.total(tokens) <= budget.device_bytes
    lines.append(f"  on {budget.device_bytes / GIB:.2f} GiB: {'fits' if fits else 'does NOT fit'}")
    best = budget.max_micro_tokens(tokens)
    if cfg.model.newton:
        lines.append(f"  train.micro_tokens: not for {cfg.model.mixer} (no linear summary to carry between slices)")
    elif t.activation_checkpoint == "none":
        lines.append("  train.micro_tokens needs train.activation_checkpoint=full or mixer")
    elif best >= tokens:
        lines.append("  largest train.micro_tokens that fits: the whole piece (0)")
    else:
        lines.append(f"  largest train.micro_tokens that fits: {best or 'none'}")
    lines.append(f"  most tokens per rank that fit with train.micro_tokens={micro}: {budget.max_tokens()}")
    return "\n".join(lines)


def check_fits(budget: MemoryBudget, tokens: int) -> None:
    """Raise a one-line :class:`ConfigError` with the numbers and the keys to change if
    ``tokens`` tokens per rank do not fit the device."""
    need = budget.total(tokens)
    if not budget.device_bytes or need <= budget.device_bytes:
        return
    t, states = budget.cfg.train, sum(budget.states.values())
    acts = tokens * budget.kept_per_token + budget.workspace(tokens, t.micro_tokens)
    fix = []
    if t.activation_checkpoint != "full":
        fix.append("train.activation_checkpoint=full")
    slices = t.activation_checkpoint != "none" and not budget.cfg.model.newton  # Newton's RNNs cannot be sliced
    best = budget.max_micro_tokens(tokens) if slices else 0
    if best:
        fix.append(f"train.micro_tokens={best}")
    most = budget.max_tokens()
    if most:
        fix.append(f"data.tokens_per_batch <= {most * budget.world} ({most} per rank)")
    if budget.cfg.parallel.zero.engine == "none" and budget.world > 1:
        fix.append("parallel.zero.engine=fsdp2")
    raise ConfigError(
        f"{tokens} tokens per rank need {need / GIB:.1f} GiB ({states / GIB:.1f} weights, gradients and optimizer, "
        f"{acts / GIB:.1f} activations, {budget.reserve / GIB:.1f} reserve) but the GPU has "
        f"{budget.device_bytes / GIB:.1f} GiB; " + ("try " + ", ".join(fix) if fix else "use more GPUs")
    )


def memory_cap(cfg: Config, world: int, device) -> int | None:
    """On a GPU: refuse (:func:`check_fits`) a config whose even share of the batch cannot fit,
    and return the most tokens a rank can hold (the planner's cap). None elsewhere."""
    import torch

    if device.type != "cuda":
        return None
    budget = MemoryBudget(cfg, world, torch.cuda.get_device_properties(device).total_memory)
    check_fits(budget, -(-cfg.data.tokens_per_batch // world))
    return budget.max_tokens()
