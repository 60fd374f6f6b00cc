"""Each step's global batch and its plan, loaded and planned one step ahead on a worker thread,
so that planning step N+1 overlaps computing step N."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from baton.data.loader import Batch, PackedLoader
from baton.parallel.plan import StepPlan
from baton.parallel.planner import CostModel

Planner = Callable[[Batch, CostModel], tuple[StepPlan, dict]]


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
