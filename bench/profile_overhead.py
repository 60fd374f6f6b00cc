"""Cost of per-rank profiling: trainer steps with the profiler on vs off, interleaved.

    python bench/profile_overhead.py [--steps 200]

One trainer (tiny-cpu defaults) alternates the real profiler and the no-op one step by step,
so both sides see the same model, data and machine state (two passes: profiled steps
even, then odd); compared per token, since steps
hold slightly different numbers of tokens. Also times the profiler's own calls per step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from baton.config import load_config  # noqa: E402
from baton.dist.env import DistEnv  # noqa: E402
from baton.launch.train import Trainer  # noqa: E402
from baton.models.flops import FlopsPerToken  # noqa: E402
from baton.profile.recorder import NullProfiler, RankProfiler  # noqa: E402

WARMUP = 10


def profiler_call_cost(tmp: Path, n: int = 2000) -> float:
    """Seconds of profiler bookkeeping per step (phase timers, record, JSON line)."""
    prof = RankProfiler(tmp / "calls", DistEnv(), torch.device("cpu"), FlopsPerToken(1, 0))
    start = time.perf_counter()
    for i in range(n):
        for phase in ("data", "forward", "backward", "grad_comm", "optimizer"):
            with prof.phase(phase):
                pass
        prof.record(i, 4096, {"sent": {"layer0.scan": 1}, "received": {}, "seconds": 0.0})
        if i % 10 == 9:
            prof.end_interval()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    per_token = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        # Two passes with the profiled steps on even, then odd steps: cancels any parity effect.
        for parity in (0, 1):
            cfg = load_config(
                None, [f"train.steps={args.steps}", f"train.run_dir={tmp}/run{parity}", "data.cache_dir=data"]
            )
            trainer = Trainer(cfg)
            on, off = trainer.profiler, NullProfiler()
            for step in range(args.steps):
                enabled = step % 2 == parity
                trainer.profiler = on if enabled else off
                start = time.perf_counter()
                result = trainer.train_step()
                if enabled and trainer.step % 20 == parity:
                    on.end_interval()
                if step >= WARMUP:
                    per_token[enabled].append((time.perf_counter() - start) / result.tokens)
        call_s = profiler_call_cost(Path(tmp))
    on_us, off_us = (statistics.mean(per_token[k]) * 1e6 for k in (True, False))
    step_s = statistics.mean(per_token[False]) * cfg.data.tokens_per_batch
    rows = [
        {
            "measure": "interleaved steps, us/token",
            "profiler_off": round(off_us, 3),
            "profiler_on": round(on_us, 3),
            "overhead_%": round(100 * (on_us - off_us) / off_us, 2),
        },
        {
            "measure": "profiler calls per step, us",
            "profiler_off": 0,
            "profiler_on": round(call_s * 1e6, 1),
            "overhead_%": round(100 * call_s / step_s, 4),
        },
    ]
    print_table(rows, list(rows[0]))
    write_json("profile_overhead", rows, steps=args.steps, config="tiny-cpu defaults")


if __name__ == "__main__":
    main()
