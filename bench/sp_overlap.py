"""Overlap of the relay with the local scan on CPU processes (gloo), and the scaling model's
prediction of the same steps.

    python bench/sp_overlap.py [--world 2 4] [--tokens-per-rank 2048] [--steps 5]

One document across every rank (one chain), a GLA model with a large state (1 head of
K = V = 512: 1 MiB per layer) so that the relay is not free; forward + backward per step
(the gradient all-reduce is left out), after a barrier, max over ranks, median of the steps.

1. Hidden: the seconds each rank waited for the relay (``CommStats.seconds``: what the scan
   did not hide) with overlap, against the same without (``parallel.sp.overlap=false``: each
   relay finishes before the scan, each gradient relay after the scan's backward, as the
   chain and log-depth relays did before). hidden = 1 - waited(overlap) / waited(none).
2. Predicted vs measured: ``baton.parallel.scaling.predict_step`` with the compute speed and
   the scan's share of a layer measured on the same processes without a relay, the summary's
   and correction's time relative to the scan's measured in the relaying runs (what sequence
   parallelism adds to the compute), and the interconnect fitted to ping-pong messages of
   64 KiB to 4 MiB between two ranks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

import baton.parallel.sequence as sequence  # noqa: E402
from baton.config import ModelConfig  # noqa: E402
from baton.data.loader import pack  # noqa: E402
from baton.dist.local import run_local  # noqa: E402
from baton.models.lm import RecurrentLM, token_losses  # noqa: E402
from baton.parallel.interconnect import Interconnect  # noqa: E402
from baton.parallel.plan import RankPiece, StepPlan, local_batch  # noqa: E402
from baton.parallel.scaling import StepModel, predict_step  # noqa: E402
from baton.parallel.sequence import SequenceParallel, apply_sequence_parallel  # noqa: E402

MODEL = ModelConfig(mixer="gla", d_model=512, n_layers=2, n_heads=1, expand_k=1.0, chunk_size=64, vocab_size=257)
STRATEGIES = ("chain", "allgather", "logscan")
PING_BYTES = [1 << 16, 1 << 18, 1 << 20, 1 << 22]


def plans(world: int, tokens: int) -> dict[str, StepPlan]:
    edges = [r * tokens for r in range(world + 1)]
    spans = [[(a, b)] for a, b in zip(edges[:-1], edges[1:])]
    return {
        "local": StepPlan([RankPiece(s) for s in spans]),  # each rank alone: no relay
        "chain": StepPlan([RankPiece(s, list(range(world))) for s in spans]),
    }


def ping_pong(rank: int) -> list[float]:
    """One-way seconds between ranks 0 and 1 for each of PING_BYTES (median of 20 round trips)."""
    out = []
    for n in PING_BYTES:
        buf, times = torch.zeros(n // 4), []
        for _ in range(20):
            dist.barrier()
            start = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            times.append((time.perf_counter() - start) / 2)
        out.append(statistics.median(times))
    return out


def worker(rank: int, world: int, tokens: int, steps: int) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    batch = pack([torch.randint(0, 257, (world * tokens,), generator=gen).numpy()], [0])
    scan_seconds, relay_op_seconds = [0.0], [0.0]
    sequence.segment_transition = timed(sequence.segment_transition, relay_op_seconds)  # the summary
    sequence.add_incoming = timed(sequence.add_incoming, relay_op_seconds)  # the correction
    results = {"ping": ping_pong(rank)}
    for name, plan in plans(world, tokens).items():
        for relay in STRATEGIES if name == "chain" else ("chain",):
            for overlap in (False, True) if name == "chain" else (True,):
                model = RecurrentLM(MODEL)
                sp = SequenceParallel(rank, world, relay, overlap=overlap)
                apply_sequence_parallel(model, sp)
                for block in model.blocks:  # the local scan's forward time, for the model's split
                    block.mixer.scan.local_scan = timed(block.mixer.scan.local_scan, scan_seconds)
                local = local_batch(plan, rank, batch)
                rows = []
                for _ in range(steps + 1):  # the first is a warm-up
                    scan_seconds[0] = relay_op_seconds[0] = 0.0
                    dist.barrier()
                    start = time.perf_counter()
                    with sp.step(plan, local) as stats:
                        loss_sum, _ = token_losses(model(local.tokens[None], local.cu_seqlens), local.labels[None])
                        forward = time.perf_counter() - start
                        loss_sum.backward()
                    rows.append(
                        (time.perf_counter() - start, forward, stats.seconds, scan_seconds[0], relay_op_seconds[0])
                    )
                    model.zero_grad(set_to_none=True)
                key = "local" if name == "local" else f"{relay}/{'overlap' if overlap else 'none'}"
                medians = (statistics.median(col) for col in zip(*rows[1:]))
                results[key] = dict(zip(("step_s", "forward_s", "waited_s", "scan_s", "relay_op_s"), medians))
    return results


def timed(fn, total: list[float]):
    def run(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        total[0] += time.perf_counter() - start
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--tokens-per-rank", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    rows = []
    for world in args.world:
        per_rank = run_local(world, worker, args.tokens_per_rank, args.steps)
        one_way = [max(r["ping"][i] for r in per_rank[:2]) for i in range(len(PING_BYTES))]
        net = Interconnect.fit(PING_BYTES, one_way, ranks_per_node=world)
        local = per_rank[0]["local"]
        layer_fwd = local["forward_s"] / MODEL.n_layers  # the head's share is small at vocab 257
        spt = max(r["local"]["step_s"] for r in per_rank) / args.tokens_per_rank
        # A middle rank of the chain summarises and corrects its whole piece: each op's share
        relay_ops = per_rank[1]["chain/overlap"]
        relay_op_share = relay_ops["relay_op_s"] / 2 / relay_ops["scan_s"]
        scan_share = min(local["scan_s"] / MODEL.n_layers / layer_fwd, 1.0)
        model = StepModel.for_model(MODEL, spt, net, scan_share, relay_op_share)
        plan = plans(world, args.tokens_per_rank)["chain"]
        for relay in STRATEGIES:
            none, lap = (max(r[f"{relay}/{o}"]["waited_s"] for r in per_rank) for o in ("none", "overlap"))
            measured = max(r[f"{relay}/overlap"]["step_s"] for r in per_rank)
            predicted = float(predict_step(model, plan, [0, world * args.tokens_per_rank], relay).max())
            rows.append(
                {
                    "ranks": world, "relay": relay,
                    "local_ms": round(1e3 * max(r["local"]["step_s"] for r in per_rank), 1),
                    "step_none_ms": round(1e3 * max(r[f"{relay}/none"]["step_s"] for r in per_rank), 1),
                    "step_overlap_ms": round(1e3 * measured, 1),
                    "waited_none_ms": round(1e3 * none, 2), "waited_overlap_ms": round(1e3 * lap, 2),
                    "hidden": round(1 - lap / none, 3) if none > 0 else "",
                    "predicted_ms": round(1e3 * predicted, 1), "pred/meas": round(predicted / measured, 3),
                }
            )  # fmt: skip
        print_table(rows[-3:], list(rows[-1]))
        rows[-1]["fit"] = {
            "latency_us": round(1e6 * net.latency_s, 1), "gb_per_s": round(net.intra_gb_per_s, 2),
            "scan_share": round(scan_share, 3), "relay_op_share": round(relay_op_share, 3),
        }  # fmt: skip
    print()
    print_table(rows, [c for c in rows[0] if c != "fit"])
    write_json("sp_overlap", rows, model=vars(MODEL), tokens_per_rank=args.tokens_per_rank, steps=args.steps)


if __name__ == "__main__":
    main()
