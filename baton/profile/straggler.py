"""Straggler detection that understands planned imbalance.

Each rank's compute time (forward + backward without communication waits) is compared
with what the cost model predicts for the tokens the plan gave it: ``tokens * c``, where
``c`` (seconds per token) is calibrated from all ranks as their median. A rank whose
measured/predicted ratio stays above ``threshold`` x the median ratio for most of a window
is slow hardware; a step where all ranks miss the prediction together is a cost-model error
(the calibration from the previous window was off), not a straggler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _median_speed(compute_s: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Per rank, the median over the window's steps of tokens per compute second (0 where a
    rank computed nothing): one slow step, such as the first one compiling and autotuning
    the kernels, does not move it."""
    worked = (tokens > 0) & (compute_s > 0)
    speeds = np.where(worked, tokens / np.where(worked, compute_s, 1.0), np.nan)
    medians = np.full(tokens.shape[1], np.nan)
    ranks = worked.any(axis=0)
    medians[ranks] = np.nanmedian(speeds[:, ranks], axis=0)
    return np.nan_to_num(medians)


@dataclass
class StragglerReport:
    stragglers: list[int]  # ranks persistently slower than predicted for their load
    ratios: list[float]  # per rank: median over the window of measured / predicted
    cost_model_error_steps: list[int]  # steps whose median ratio missed by > cost_model_tolerance
    seconds_per_token: float  # the calibrated cost model
    tokens_per_s: list[float]  # per-rank compute speed, for the planner's calibration
    threshold: float

    def to_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class StragglerDetector:
    threshold: float = 1.25
    persistence: float = 0.6  # fraction of the window's steps a rank must be slow in
    cost_model_tolerance: float = 0.25
    seconds_per_token: float | None = None  # calibration carried from the previous window

    def update(self, steps: list[int], compute_s: np.ndarray, tokens: np.ndarray) -> StragglerReport:
        """``compute_s``, ``tokens``: [n_steps, n_ranks] for one window."""
        per_token = compute_s / np.maximum(tokens, 1)
        calibrated = float(np.median(per_token))
        predicted = tokens * calibrated
        ratio = compute_s / np.maximum(predicted, 1e-12)
        relative = ratio / np.median(ratio, axis=1, keepdims=True)
        slow_fraction = (relative > self.threshold).mean(axis=0)
        stragglers = [int(r) for r in np.flatnonzero(slow_fraction >= self.persistence)]
        errors = []
        if self.seconds_per_token is not None:
            step_ratio = np.median(compute_s / np.maximum(tokens * self.seconds_per_token, 1e-12), axis=1)
            errors = [int(s) for s, r in zip(steps, step_ratio) if abs(r - 1) > self.cost_model_tolerance]
        self.seconds_per_token = calibrated
        report = StragglerReport(
            stragglers,
            np.median(relative, axis=0).round(4).tolist(),
            errors,
            calibrated,
            _median_speed(compute_s, tokens).tolist(),
            self.threshold,
        )
        return report
