"""How long a step takes on every rank with each relay strategy, and the strategy to use.

A layer on a rank runs, forward: the part before its relay starts (projections, the
segment summary), the local scan, then the part after the incoming state arrives (the
correction, the MLP); the relay is in flight during the scan. The backward mirrors it with
the gradient relay in flight during the scan's backward. So per layer and rank

    end = max(start + before + scan, arrival) + after          (overlap)
    end = max(start + before, arrival) + scan + after           (no overlap)

and the arrival of the incoming state depends on the strategy:

- chain: along each dependency run (``StepPlan.dependency_runs``) a rank forwards the state
  the moment it lands (the relay thread / side stream does, not the scan), so the state
  reaching rank r left the run's earlier rank j when j's summary was ready and travelled
  the hops from j to r; in ``blocks`` pieces, each hop moves 1/blocks of the state and the
  last piece lands ``blocks - 1`` such hops after the first.
- logscan: ceil(log2 n) rounds of one summary; all of a chain's ranks must have joined.
- allgather: a ring all-gather of every rank's summary over the whole world (LASP-2):
  (P - 1) steps, each a summary over the slowest link the ring crosses.

A Newton-trained RNN's layer relays once per iteration in forward: it is modelled as that many
consecutive passes, each with its share of the layer's forward time.

Layers follow one another on each rank, so waits propagate as a wavefront and a chain's
latency is paid about once per pass rather than once per layer. The model is this recurrence,
evaluated for every rank and layer (vectorised over ranks), not a closed form; the gradient
all-reduce and optimizer step are the same for every strategy and left out.

The links are :class:`~baton.parallel.interconnect.Interconnect`, the planner's hop model too.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from baton.config import ModelConfig, ParallelConfig
from baton.models.flops import (
    flops_per_token,
    forward_relays,
    mixer_linear_params,
    recurrence_flops,
    recurrent_layers,
    scan_shape,
    summary_bytes,
)
from baton.parallel.interconnect import Interconnect
from baton.parallel.plan import StepPlan
from baton.parallel.relay import STRATEGIES

CPU_FLOPS = 1e11  # a CPU process's peak, assumed where the device's is unknown


@dataclass
class LayerTimes:
    """One layer's compute on one rank, per token (seconds), forward or backward, split as
    the relay sees it: before it starts, the scan it overlaps, after it finishes; and what
    sequence parallelism adds, per token of the segments it covers: the summary of the
    piece's last segment (before the relay) and the correction of its first (after)."""

    before: float
    scan: float
    after: float
    summary: float = 0.0
    correction: float = 0.0


@dataclass
class StepModel:
    """What the prediction needs about the model and the machine."""

    n_layers: int
    state_bytes: int  # one layer's state [H, K, V] (the chain's message)
    summary_bytes: int  # one layer's summary (A, S) (the all-gather's and log-depth's message)
    forward: LayerTimes
    backward: LayerTimes
    head_seconds_per_token: float  # embedding, LM head and loss, forward and backward
    interconnect: Interconnect
    forward_relays: int = 1  # per layer (Newton iterations); ``forward`` is one relay's share

    @classmethod
    def for_model(
        cls, cfg: ModelConfig, seconds_per_token: float, interconnect: Interconnect, scan_share: float | None = None,
        relay_op_share: float | None = None,
    ) -> StepModel:  # fmt: skip
        """Split a measured (or assumed) training time per token over the layers by FLOPs;
        ``scan_share``: the scan's part of a layer's time (default: its FLOP share, which
        under-states it on GPUs, where the scan runs below matmul speed: conservative, it is
        the window that hides the relay); ``relay_op_share``: the summary's (and the
        correction's) time per token relative to the scan's (default: by FLOPs)."""
        flops = flops_per_token(cfg)
        layers = recurrent_layers(cfg)  # a hybrid's attention layers relay no state: priced with the head
        recurrence = sum(recurrence_flops(layer) for layer in layers)
        mlp = 2 * 3 * cfg.d_model * cfg.mlp_hidden
        relaying = sum(2 * mixer_linear_params(layer) + mlp for layer in layers) + recurrence
        layer_share = relaying / flops.forward
        per_layer = seconds_per_token * layer_share / len(layers)
        scan = recurrence / relaying if scan_share is None else scan_share
        H, K, V = scan_shape(cfg)
        # The summary accumulates k vᵀ, the correction reads the state with q: 2HKV FLOPs per
        # token each, priced at the scan's speed unless measured.
        relay_op = 2 * H * K * V / (recurrence / len(layers)) if relay_op_share is None else relay_op_share

        def split(seconds: float) -> LayerTimes:
            rest, scan_s = (1 - scan) * seconds / 2, scan * seconds
            return LayerTimes(rest, scan_s, rest, relay_op * scan_s, relay_op * scan_s)

        relays = forward_relays(layers[0])
        return cls(
            len(layers), 4 * H * K * V, summary_bytes(cfg), split(per_layer / 3 / relays),
            split(2 * per_layer / 3), seconds_per_token * (1 - layer_share), interconnect, relays,
        )  # fmt: skip


Route = tuple[np.ndarray, np.ndarray, np.ndarray]  # a run's ranks, its hops, time travelled from its start


def _chain_routes(runs: list[list[int]], nbytes: float, blocks: int, net: Interconnect) -> list[Route]:
    """Each dependency run's ranks, the seconds of each hop of one block, and the seconds from
    the run's first rank to each (the same for every layer: computed once per prediction)."""
    routes = []
    for run in runs:
        order = np.asarray(run)
        hop = net.hops(nbytes / blocks, order)
        routes.append((order, hop, np.concatenate([[0.0], np.cumsum(hop)])))
    return routes


def _chain_arrival(ready: np.ndarray, routes: list[Route], blocks: int) -> np.ndarray:
    """When the incoming state has fully arrived at each rank (-inf: nothing comes in)."""
    arrival = np.full(len(ready), -np.inf)
    for order, hop, travelled in routes:
        left = np.maximum.accumulate(ready[order] - travelled)[:-1]  # latest departure, rebased
        arrival[order[1:]] = np.maximum(arrival[order[1:]], left + travelled[1:] + (blocks - 1) * hop)
    return arrival


def _logscan_arrival(ready: np.ndarray, chains: list[list[int]], nbytes: float, net: Interconnect) -> np.ndarray:
    arrival = np.full(len(ready), -np.inf)
    for chain in chains:
        order = np.asarray(chain)
        rounds = math.ceil(math.log2(len(order)))
        hop = net.hop(nbytes, int(order.min()), int(order.max()))  # between nodes if the chain spans them
        arrival[order] = ready[order].max() + rounds * hop
    return arrival


def _allgather_arrival(ready: np.ndarray, nbytes: float, net: Interconnect) -> np.ndarray:
    P = len(ready)
    worst = net.hop(nbytes, 0, P - 1)  # the ring crosses nodes when there is more than one
    return np.full(P, ready.max() + (P - 1) * worst)


def predict_step(
    model: StepModel,
    plan: StepPlan,
    boundaries: list[int],
    strategy: str,
    slowdown: list[float] | None = None,
    blocks: int = 1,
    overlap: bool = True,
) -> np.ndarray:
    """Predicted seconds of forward + backward on every rank (the step's time is the max).
    ``slowdown``: each rank's time per token relative to the model's (1.0 each by default)."""
    P = plan.world_size
    speed = np.ones(P) if slowdown is None else np.asarray(slowdown, float)
    tokens = np.array([p.n_tokens for p in plan.pieces], dtype=float) * speed
    first, last = (t * speed for t in _relay_segments(plan, boundaries, strategy))
    chains = [list(c) for c in {tuple(p.chain) for p in plan.pieces if len(p.chain) > 1}]
    relays = bool(chains)
    routes: dict[bool, list[Route]] = {}  # by direction: forward, backward (the runs reversed)
    if relays and strategy == "chain":
        runs = plan.dependency_runs(boundaries)
        for backward in (False, True):
            directed = [r[::-1] for r in runs] if backward else runs
            routes[backward] = _chain_routes(directed, model.state_bytes, blocks, model.interconnect)

    def arrival(ready: np.ndarray, backward: bool) -> np.ndarray:
        if not relays:
            return np.full(P, -np.inf)
        if strategy == "chain":
            return _chain_arrival(ready, routes[backward], blocks)
        if strategy == "logscan":
            return _logscan_arrival(ready, chains, model.summary_bytes, model.interconnect)
        return _allgather_arrival(ready, model.summary_bytes, model.interconnect)

    clock = tokens * model.head_seconds_per_token / 3  # the embedding
    forward = [(model.forward, False)] * (model.n_layers * model.forward_relays)
    passes = forward + [(model.backward, True)] * model.n_layers
    for times, backward in passes:
        ready = clock + tokens * times.before + last * times.summary
        arrived = arrival(ready, backward)
        after = tokens * times.after + first * times.correction
        if overlap:
            clock = np.maximum(ready + tokens * times.scan, arrived) + after
        else:
            clock = np.maximum(ready, arrived) + tokens * times.scan + after
    return clock + tokens * model.head_seconds_per_token * 2 / 3


def _relay_segments(plan: StepPlan, boundaries: list[int], strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """Per rank, the tokens the correction covers (the first segment, where the piece continues
    a document from the rank before) and the summary covers (the last segment, where the rank
    takes part in the relay: in a chain, or in the all-gather every rank joins)."""
    first, last = np.zeros(plan.world_size), np.zeros(plan.world_size)
    if not any(len(p.chain) > 1 for p in plan.pieces):
        return first, last
    for r, piece in enumerate(plan.pieces):
        if len(piece.chain) < 2 and strategy != "allgather":
            continue
        start, end = piece.spans[-1]
        last[r] = end - max(start, boundaries[bisect.bisect_left(boundaries, end) - 1])
        start, end = piece.spans[0]
        i = bisect.bisect_left(boundaries, start)
        if plan.neighbours(r)[0] is not None and boundaries[i] != start:
            first[r] = min(end, boundaries[i]) - start
    return first, last


def choose_strategy(
    model: StepModel, plan: StepPlan, boundaries: list[int], slowdown: list[float] | None = None, blocks: int = 1
) -> tuple[str, dict[str, float]]:
    """The strategy with the shortest predicted step, and every strategy's prediction."""
    predicted = {s: float(predict_step(model, plan, boundaries, s, slowdown, blocks).max()) for s in STRATEGIES}
    return min(predicted, key=predicted.get), predicted


def assumed_seconds_per_token(cfg: ModelConfig, peak_flops: float | None, mfu: float = 0.4) -> float:
    """A training token's time before a run has measured it: its FLOPs at ``mfu`` of the
    device's peak (``CPU_FLOPS`` where the peak is unknown)."""
    return flops_per_token(cfg).training / (mfu * (peak_flops or CPU_FLOPS))


def choose_relay(
    cfg: ModelConfig, parallel: ParallelConfig, plan: StepPlan, boundaries: list[int], seconds_per_token: list[float]
) -> tuple[str, dict[str, float]]:
    """``parallel.sp.relay=auto``: this step's strategy from the interconnect of the
    ``parallel.planner`` keys and the ranks' speeds."""
    p = parallel.planner
    net = Interconnect.from_config(p)
    typical = float(np.median(seconds_per_token))
    model = StepModel.for_model(cfg, typical, net)
    slowdown = [s / typical for s in seconds_per_token]
    return choose_strategy(model, plan, boundaries, slowdown, parallel.sp.relay_blocks)
