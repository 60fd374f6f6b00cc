"""torch.profiler (Chrome) traces of chosen steps on chosen ranks (``profile.trace_ranks``,
``profile.trace_steps``): ``RUN_DIR/profile/trace_rank{R}_steps{first}-{last}.json``."""

from __future__ import annotations

from pathlib import Path

import torch


class StepTracer:
    """Traces steps ``min(steps)`` to ``max(steps)`` on this rank if it is one of ``ranks``."""

    def __init__(self, ranks: list[int], steps: list[int], rank: int, device: torch.device, run_dir: Path) -> None:
        self.active = bool(steps) and rank in ranks
        self.first, self.last = (min(steps), max(steps)) if steps else (0, 0)
        self.path = Path(run_dir) / "profile" / f"trace_rank{rank}_steps{self.first}-{self.last}.json"
        self.device = device
        self._profiler: torch.profiler.profile | None = None

    def before_step(self, step: int) -> None:
        if self.active and step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities, record_shapes=True)
            self._profiler.__enter__()

    def after_step(self, step: int) -> None:
        if self._profiler is not None and step == self.last:
            self._profiler.__exit__(None, None, None)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._profiler.export_chrome_trace(str(self.path))
            self._profiler = None
