"""Step phases timed with CUDA events on GPU and the wall clock on CPU."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class PhaseTimer:
    """``with timer.phase("forward"): ...``; :meth:`collect` returns seconds per phase and
    resets. On CUDA the events are read once per step, in ``collect``, so timing adds no
    host synchronisation inside the step."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._events: list[tuple[str, object, object]] = []
        self._seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((name, start, end))
        else:
            start = time.perf_counter()
            try:
                yield
            finally:
                self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - start

    def collect(self) -> dict[str, float]:
        if self._events:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                self._seconds[name] = self._seconds.get(name, 0.0) + start.elapsed_time(end) / 1e3
        seconds, self._seconds, self._events = self._seconds, {}, []
        return seconds
