"""Sequence-parallel relay on CPU processes: bytes on the wire and step time.

1. Bytes each rank sends per layer (forward and backward) while the sequence grows, for
   every relay, measured from the run's comm accounting; next to what ring attention sends
   for the same shapes (every rank's K and V blocks pass every other rank: (P-1)/P * T *
   2 * d_model values per layer forward, as much again for dK/dV backward).
2. Wall time of one training step (forward, backward, gradient all-reduce) on 2 processes
   with sequence parallelism vs 1 process on the same tokens.

    python bench/sp_relay.py [--lengths 1024 4096 16384] [--world 2 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from baton.config import ModelConfig  # noqa: E402
from baton.data.loader import pack  # noqa: E402
from baton.dist.local import run_local  # noqa: E402
from baton.models.lm import RecurrentLM, token_losses  # noqa: E402
from baton.parallel.plan import local_batch  # noqa: E402
from baton.parallel.planner import even_groups_plan  # noqa: E402
from baton.parallel.sequence import SequenceParallel, apply_sequence_parallel  # noqa: E402

MODEL = dict(d_model=256, n_layers=2, n_heads=4, chunk_size=64)


def one_document(T: int):
    gen = torch.Generator().manual_seed(T)
    return pack([torch.randint(0, 257, (T,), generator=gen).numpy()], [0])


def step(model: RecurrentLM, sp: SequenceParallel | None, rank: int, world: int, batch) -> None:
    plan = even_groups_plan(batch, world, world)
    local = local_batch(plan, rank, batch)
    with sp.step(plan, local) if sp is not None else nullcontext():
        loss_sum, _ = token_losses(model(local.tokens[None], local.cu_seqlens), local.labels[None])
        (loss_sum / batch.n_targets).backward()
    if world > 1:
        flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        dist.all_reduce(flat)
    model.zero_grad(set_to_none=True)


def worker(rank: int, world: int, mixer: str, relay: str, lengths: list[int], repeat: int) -> list[dict]:
    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(mixer=mixer, **MODEL))
    sp = SequenceParallel(rank, world, relay) if world > 1 else None
    if sp is not None:
        apply_sequence_parallel(model, sp)
    rows = []
    for T in lengths:
        batch = one_document(T)
        step(model, sp, rank, world, batch)  # warm-up
        times = []
        for _ in range(repeat):
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            step(model, sp, rank, world, batch)
            times.append(time.perf_counter() - start)
        stats = sp.stats.to_dict() if sp is not None else {"sent": {}, "received": {}}
        rows.append(
            {
                "T": T,
                "seconds": sorted(times)[len(times) // 2],
                "fwd_bytes": stats["sent"].get("layer0.scan", 0) + stats["sent"].get("layer0.conv", 0),
                "bwd_bytes": stats["sent"].get("layer0.scan.grad", 0) + stats["sent"].get("layer0.conv.grad", 0),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--world", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mixers", nargs="+", default=["gla", "ssd", "gdn"])
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"

    wire = []
    for mixer in args.mixers:
        for world in args.world:
            for relay in ("chain", "allgather", "logscan"):
                per_rank = run_local(world, worker, mixer, relay, args.lengths, 1)
                for i, T in enumerate(args.lengths):
                    ring = (world - 1) * (T // world) * 2 * MODEL["d_model"] * 4
                    wire.append(
                        {
                            "mixer": mixer,
                            "ranks": world,
                            "relay": relay,
                            "T": T,
                            "max_fwd_B": max(r[i]["fwd_bytes"] for r in per_rank),
                            "max_bwd_B": max(r[i]["bwd_bytes"] for r in per_rank),
                            "ring_attn_fwd_B": ring,
                        }
                    )
    print("bytes sent per rank per layer (max over ranks), fp32")
    print_table(wire, ["mixer", "ranks", "relay", "T", "max_fwd_B", "max_bwd_B", "ring_attn_fwd_B"])

    timing = []
    for mixer in args.mixers:
        torch.set_num_threads(1)
        one = worker(0, 1, mixer, "chain", args.lengths, args.repeat)
        torch.set_num_threads(2)
        one_2t = worker(0, 1, mixer, "chain", args.lengths, args.repeat)
        two = run_local(2, worker, mixer, "chain", args.lengths, args.repeat)
        for i, T in enumerate(args.lengths):
            sp_time = max(r[i]["seconds"] for r in two)
            timing.append(
                {
                    "mixer": mixer,
                    "T": T,
                    "1proc_1thread_s": round(one[i]["seconds"], 3),
                    "1proc_2threads_s": round(one_2t[i]["seconds"], 3),
                    "2proc_sp_s": round(sp_time, 3),
                    "speedup_vs_1thread": round(one[i]["seconds"] / sp_time, 2),
                }
            )
    print("\ntraining step (forward + backward + gradient all-reduce), one document of T tokens")
    print_table(timing, list(timing[0]))
    write_json("sp_relay", wire + timing, model=MODEL, cpu_threads_per_rank=1)


if __name__ == "__main__":
    main()
