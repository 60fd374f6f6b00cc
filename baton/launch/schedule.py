"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from baton.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms, biases and gate vectors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warmup to 1, then cosine down to ``min_lr_ratio`` at ``total``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, cfg: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, cfg))


def optimizer_factory(cfg: OptimConfig, total_steps: int):
    """What ``parallelize`` calls over the final model: AdamW and its schedule."""

    def make(model: nn.Module) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
        optimizer = build_optimizer(model, cfg)
        return optimizer, build_scheduler(optimizer, total_steps, cfg)

    return make


def schedule_state(scheduler: torch.optim.lr_scheduler.LambdaLR) -> dict:
    """What a checkpoint keeps of the schedule: its position, as plain JSON (LambdaLR's own
    state_dict would hold the lambda, which is rebuilt from the config instead)."""
    state = scheduler.state_dict()
    return {k: state[k] for k in ("last_epoch", "_step_count", "_last_lr", "base_lrs")}


def load_schedule_state(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict) -> None:
    """Restore :func:`schedule_state`; the lambda stays the one built from the config."""
    scheduler.load_state_dict({**state, "lr_lambdas": [None] * len(state["base_lrs"])})
