"""Faults injected on purpose, all in one place: the tests kill a rank at a chosen point, and
``profile.slow_rank`` shows the straggler detector a slow GPU. No step code carries fault logic."""

from __future__ import annotations

import os
import signal
import time

from torch import nn

KILL_AT_STEP = "BATON_TEST_KILL_AT_STEP"  # "RANK:STEP": that rank SIGKILLs itself as the step begins
KILL_IN_SAVE = "BATON_TEST_KILL_IN_SAVE"  # "RANK:STEP": after writing its shard of that step's checkpoint


def kill_if_asked(variable: str, rank: int, step: int) -> None:
    """SIGKILL this process if ``variable`` names this rank and step (``"RANK:STEP"``)."""
    if os.environ.get(variable) == f"{rank}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def slow_down(model: nn.Module, rank: int, slow_rank: int, seconds_per_ktoken: float) -> None:
    """Make rank ``slow_rank`` a straggler: its model's training forward sleeps in proportion
    to the tokens, so the delay is timed as compute, as a slow GPU's would be."""
    if rank != slow_rank or seconds_per_ktoken <= 0:
        return

    def sleep(module: nn.Module, args: tuple) -> None:
        if module.training:
            time.sleep(seconds_per_ktoken * args[0].numel() / 1000)

    model.register_forward_pre_hook(sleep)
