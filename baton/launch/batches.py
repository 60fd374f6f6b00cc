"""Each step's global batch and its plan: the plan made by the configured planner over a cost
model that the run's measured speeds calibrate (:class:`StepPlanner`), batches loaded and
planned one step ahead on a worker thread, so that planning step N+1 overlaps computing step N
(:class:`PlannedBatches`)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist

from baton.config import Config
from baton.data.loader import Batch, PackedLoader
from baton.dist.env import DistEnv
from baton.parallel.interconnect import Interconnect
from baton.parallel.plan import StepPlan
from baton.parallel.planner import CostModel, make_plan
from baton.parallel.scaling import assumed_seconds_per_token, choose_relay

Planner = Callable[[Batch, CostModel], tuple[StepPlan, dict]]


class StepPlanner:
    """A :data:`Planner`: ``parallel.planner.kind`` over the cost model, and under
    ``parallel.sp.relay=auto`` the relay the scaling model predicts fastest for the plan."""

    def __init__(self, cfg: Config, env: DistEnv, peak_flops: float | None, memory_cap: int | None) -> None:
        self.cfg, self.env = cfg, env
        net = Interconnect.from_config(cfg.parallel.planner)
        caps = [memory_cap] * env.world_size if memory_cap else None
        self.cost = CostModel.for_model(cfg.model, [1.0] * env.world_size, net, caps)
        # for relay=auto until the run has measured its speed
        self.assumed_seconds_per_token = assumed_seconds_per_token(cfg.model, peak_flops)
        # A hybrid's work per token differs by rank (attention's pairs): per rank, the tokens
        # and work units of the plans made since the last calibration.
        self.planned: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, batch: Batch, cost: CostModel) -> tuple[StepPlan, dict]:
        cfg = self.cfg
        min_piece = max(4, cfg.model.conv_size)
        plan, info = make_plan(cfg.parallel.planner.kind, batch, cost, cfg.parallel.sp.size, min_piece)
        if cost.pair_tokens:
            tokens = np.array([p.n_tokens for p in plan.pieces], dtype=float)
            self.planned.append((tokens, cost.work(plan, batch.cu_seqlens.tolist())))
        if cfg.parallel.sp.relay == "auto":
            seconds_per_token = (
                cost.seconds_per_token if cost.measured else [self.assumed_seconds_per_token] * len(plan.pieces)
            )
            plan.relay, info["relay_predicted_s"] = choose_relay(
                cfg.model, cfg.parallel, plan, batch.cu_seqlens.tolist(), seconds_per_token
            )
        return plan, info

    def calibrate(self, summary: dict | None) -> None:
        """Feed the measured per-rank speed (rank 0's interval summary) to the cost model."""
        p = self.cfg.parallel
        if (p.planner.kind != "balanced" and p.sp.relay != "auto") or not self.env.distributed:
            return
        speeds = torch.tensor(summary["tokens_per_s"] if summary else [0.0] * self.env.world_size, dtype=torch.float64)
        dist.broadcast(speeds, 0)
        planned, self.planned = self.planned, []
        if planned:  # tokens per second as work units per second: every rank plans alike
            tokens, work = (sum(x) for x in zip(*planned))
            speeds = speeds * torch.from_numpy(work / np.maximum(tokens, 1))
        if (speeds > 0).all():
            self.cost.seconds_per_token = (1.0 / speeds).tolist()
            self.cost.measured = True


class PlannedBatches:
    def __init__(self, loader: PackedLoader, planner: Planner) -> None:
        self.loader, self.planner = loader, planner
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-planner")
        self._ahead: Future | None = None

    def _load_and_plan(self, cost: CostModel) -> tuple[Batch, StepPlan, dict, dict]:
        cursor = self.loader.state_dict()
        batch = self.loader.next_batch()
        return (batch, *self.planner(batch, cost), cursor)

    def next(self, cost: CostModel) -> tuple[Batch, StepPlan, dict]:
        """This step's batch, plan and what the planner says of it; the next step's are started.
        The cost model is copied when the work is handed over: the same point of the loop on
        every rank, so every rank plans alike."""
        if self._ahead is None:
            self._ahead = self._thread.submit(self._load_and_plan, replace(cost))
        batch, plan, info, _ = self._ahead.result()
        self._ahead = self._thread.submit(self._load_and_plan, replace(cost))
        return batch, plan, info

    def cursor(self) -> dict:
        """The loader position of the next batch to train on (what a checkpoint stores: the
        batch loaded ahead has not been trained on)."""
        return self._ahead.result()[3] if self._ahead is not None else self.loader.state_dict()

    def close(self) -> None:
        self._thread.shutdown(wait=True)
