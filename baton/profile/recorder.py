"""Per-rank step records (JSONL) and the rank-0 summary across ranks per logging interval.

RUN_DIR/profile/rank{R}.jsonl   one record per step: tokens, phase times, tokens/s, MFU,
                                relay bytes and time, peak memory, GPU telemetry
RUN_DIR/profile/summary.jsonl   per interval: min / median / max compute time across ranks
                                (steps are synchronous, so step time is the same everywhere),
                                the slowest rank, stragglers, the cost-model calibration
"""

from __future__ import annotations

import json
import resource
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from baton.dist.env import DistEnv
from baton.models.flops import FlopsPerToken
from baton.profile.gpu import GpuMonitor, peak_flops
from baton.profile.straggler import StragglerDetector
from baton.profile.timer import PhaseTimer

PHASES = ("data", "forward", "backward", "grad_comm", "optimizer", "checkpoint")


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
        return peak
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # process peak RSS (Linux: KiB)
    return kib / 2**20


class RankProfiler:
    def __init__(
        self,
        run_dir: Path,
        env: DistEnv,
        device: torch.device,
        flops: FlopsPerToken,
        peak_tflops: float = 0.0,
        threshold: float = 1.25,
    ) -> None:
        self.env, self.device, self.flops = env, device, flops
        self.dir = Path(run_dir) / "profile"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.records = open(self.dir / f"rank{env.rank}.jsonl", "a")
        self.summaries = open(self.dir / "summary.jsonl", "a") if env.is_main else None
        self.timer = PhaseTimer(device)
        self.gpu = GpuMonitor(device, announce=env.is_main)
        self.peak = peak_flops(device, peak_tflops)
        self.detector = StragglerDetector(threshold=threshold)
        self.window: list[tuple[int, float, int, float]] = []  # step, compute s, tokens, step s

    def phase(self, name: str):
        return self.timer.phase(name)

    def record(self, step: int, tokens: int, comm: dict, attention_pairs: int = 0) -> dict:
        """Close the step: write this rank's record and remember it for the interval summary.
        ``attention_pairs``: the (query, key) pairs its attention layers scored (MFU counts
        attention's quadratic term)."""
        phases = self.timer.collect()
        step_s = sum(phases.values())
        relay_s = comm.get("seconds", 0.0)
        compute_s = max(phases.get("forward", 0.0) + phases.get("backward", 0.0) - relay_s, 0.0)
        rec = {
            "step": step,
            "rank": self.env.rank,
            "tokens": tokens,
            "step_s": step_s,
            "compute_s": compute_s,
            "relay_s": relay_s,
            **{f"{p}_s": phases.get(p, 0.0) for p in PHASES},
            "tokens_per_s": tokens / step_s if step_s else 0.0,
            "model_flops": self.flops.training_step(tokens, attention_pairs),
            "relay_sent_bytes": sum(comm.get("sent", {}).values()),
            "relay_received_bytes": sum(comm.get("received", {}).values()),
            "peak_mem_gb": peak_memory_gb(self.device),
            **self.gpu.read(),
        }
        rec["mfu"] = rec["model_flops"] / step_s / self.peak if self.peak and step_s else None
        self.records.write(json.dumps(rec) + "\n")
        self.window.append((step, compute_s, tokens, step_s))
        return rec

    def end_interval(self) -> dict | None:
        """Collective: every rank calls it at the same steps. Returns the summary on rank 0."""
        local = torch.tensor(self.window, dtype=torch.float64).reshape(-1, 4)
        self.window = []
        self.records.flush()
        if self.env.distributed:
            parts = [torch.empty_like(local) for _ in range(self.env.world_size)]
            dist.all_gather(parts, local)
            table = torch.stack(parts, dim=1).numpy()  # [steps, ranks, 4]
        else:
            table = local[:, None].numpy()
        if not self.env.is_main or len(table) == 0:
            return None
        steps = table[:, 0, 0].astype(int).tolist()
        # Synchronous steps take as long on every rank; compute time shows who holds them up.
        step_s, compute_s = table[:, :, 3].mean(axis=0), table[:, :, 1].mean(axis=0)
        report = self.detector.update(steps, table[:, :, 1], table[:, :, 2])
        summary = {
            "steps": [steps[0], steps[-1]],
            "step_s_median": float(np.median(step_s)),
            "compute_s_min": float(compute_s.min()),
            "compute_s_median": float(np.median(compute_s)),
            "compute_s_max": float(compute_s.max()),
            "slowest_rank": int(compute_s.argmax()),
            **report.to_dict(),
        }
        self.summaries.write(json.dumps(summary) + "\n")
        self.summaries.flush()
        if report.stragglers:
            print(
                f"baton: stragglers {report.stragglers} (compute / predicted for their load: "
                f"{[report.ratios[r] for r in report.stragglers]})",
                file=sys.stderr,
                flush=True,
            )
        return summary

    def close(self) -> None:
        self.records.close()
        if self.summaries:
            self.summaries.close()


class NullProfiler:
    """Profiling switched off (``profile.enabled=false``): the same calls, no work."""

    def phase(self, name: str):
        return nullcontext()

    def record(self, step: int, tokens: int, comm: dict) -> None:
        return None

    def end_interval(self) -> None:
        return None

    def close(self) -> None:
        pass
