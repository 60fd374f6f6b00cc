"""Hybrid models under sequence parallelism: what the attention layers move, how balanced the
plans are, and one measured run.

    python bench/hybrid_sp.py [--part bytes sim measured] [--ranks 16 64 256 512]

(a) bytes: keys and values per attention layer (forward; the gradients in backward are as
    many) against the length of one long document among short ones (lognormal around 1K
    tokens), on the same packed plans (8 ranks of 32K tokens, the balanced plan of the 1.3B
    hybrid): baton (only documents that straddle a
    cut, gathered from their owners), ring attention (every rank's keys and values around the
    whole ring) and an all-gather of every rank's keys and values (LASP-2H).
(b) sim: predicted step time and imbalance (slowest rank over the mean) at 16-512 ranks, the
    balanced plan against equal contiguous cuts and zigzag (Megatron / Llama 3 context
    parallelism, groups of 8, costed with the all-to-alls their recurrent layers need), on
    uniform and mixed-speed clusters, documents log-uniform from 1K to 128K tokens. Times from
    the cost model (baton.parallel.planner.CostModel) at the H100's bf16 peak, 40% MFU.
(c) measured: 4 real processes on this CPU (gloo), a tiny GDN + attention hybrid, one batch
    with a long document; forward and backward per rank under the balanced plan and under
    equal contiguous cuts (the same math: both exact): the step (the slowest rank's wall
    time) and each rank's compute (its wall time less its waits for messages).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from baton.config import load_config  # noqa: E402
from baton.models.flops import attention_layers  # noqa: E402
from baton.parallel.baselines import equal_split_plan, zigzag_plan  # noqa: E402
from baton.parallel.interconnect import Interconnect  # noqa: E402
from baton.parallel.plan import StepPlan, prefix_sources  # noqa: E402
from baton.parallel.planner import CostModel, balanced_plan  # noqa: E402
from baton.parallel.scaling import assumed_seconds_per_token  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
H100_BF16 = 989e12
TOKENS_PER_RANK = 32768


def log_uniform_mix(total: int, rng: np.random.Generator, low: int = 1024, high: int = 131072) -> list[int]:
    lengths = []
    while sum(lengths) < total:
        lengths.append(int(np.exp(rng.uniform(np.log(low), np.log(high)))))
    lengths[-1] -= sum(lengths) - total
    return [n for n in lengths if n > 0]


def with_long_document(length: int, total: int, rng: np.random.Generator) -> list[int]:
    """One document of ``length`` tokens among short ones (lognormal around 1K) filling ``total``."""
    rest = []
    while length + sum(rest) < total:
        rest.append(max(16, int(rng.lognormal(7.0, 0.8))))
    if rest:
        rest[-1] -= length + sum(rest) - total
    return [length, *[n for n in rest if n > 0]]


def bounds_of(lengths: list[int]) -> list[int]:
    return [0, *np.cumsum(lengths).tolist()]


def kv_token_bytes(model) -> int:
    """One token's keys and values in one attention layer, bf16."""
    return model.attn_kv_heads * 2 * model.attn_head_dim * 2


def bytes_part(model) -> list[dict]:
    R, per_token = 8, kv_token_bytes(model)
    cost = CostModel.for_model(model, [assumed_seconds_per_token(model, H100_BF16)] * R, Interconnect())
    rows = []
    for length in (1024, 4096, 16384, 65536, 131072, 262144):
        rng = np.random.default_rng(length)
        bounds = bounds_of(with_long_document(length, R * TOKENS_PER_RANK, rng))
        plan = balanced_plan(bounds, cost).plan
        received = [sum(n for _, n in prefix_sources(plan, r, bounds)) * per_token for r in range(R)]
        total = bounds[-1] * per_token
        ring = (R - 1) / R * total  # per rank: every other rank's block passes through
        rows.append(
            {
                "long_doc": length,
                "cut_docs": sum(1 for r in range(R) if prefix_sources(plan, r, bounds)),
                "baton_total_MB": round(sum(received) / 1e6, 2),
                "baton_max_rank_MB": round(max(received) / 1e6, 2),
                "ring_per_rank_MB": round(ring / 1e6, 2),
                "allgather_per_rank_MB": round(ring / 1e6, 2),
                "ring_total_MB": round(R * ring / 1e6, 2),
            }
        )
    return rows


def sim_part(model, ranks: list[int]) -> list[dict]:
    net, rows = Interconnect(), []
    base = assumed_seconds_per_token(model, H100_BF16)
    for R in ranks:
        rng = np.random.default_rng(R)
        bounds = bounds_of(log_uniform_mix(R * TOKENS_PER_RANK, rng))
        for cluster in ("uniform", "mixed"):
            seconds = np.full(R, base)
            if cluster == "mixed":  # a quarter of an older generation (1.5x slower), a few throttled 20%
                seconds[: R // 4] *= 1.5
                seconds[rng.choice(R, size=max(1, R // 16), replace=False)] *= 1.2
            cost = CostModel.for_model(model, seconds.tolist(), net)
            results = {
                "balanced": balanced_plan(bounds, cost),
                "equal-contiguous": equal_split_plan(bounds, cost),
                "zigzag-cp8": zigzag_plan(bounds, cost, model, net, group=8),
            }
            ours = max(results["balanced"].predicted_s)
            for name, res in results.items():
                rows.append(
                    {
                        "ranks": R,
                        "cluster": cluster,
                        "plan": name,
                        "step_s": round(max(res.predicted_s), 3),
                        "imbalance": round(res.imbalance, 4),
                        "vs_balanced": round(max(res.predicted_s) / ours, 3),
                    }
                )
            print_table(rows[-3:], list(rows[-1]))
    return rows


def measured_worker(rank: int, world: int, lengths: list[int], plans: dict, repeat: int) -> dict:
    import torch

    from baton.data.loader import pack
    from baton.models.lm import RecurrentLM, token_losses
    from baton.parallel.plan import local_batch
    from baton.parallel.sequence import SequenceParallel, apply_sequence_parallel

    cfg = load_config(None, MEASURED_MODEL).model
    torch.manual_seed(0)
    model = apply_sequence_parallel(RecurrentLM(cfg), sp := SequenceParallel(rank, world, "chain"))
    rng = np.random.default_rng(0)
    batch = pack([rng.integers(0, 257, size=n) for n in lengths], list(range(len(lengths))))
    out = {}
    for name, plan_dict in plans.items():
        plan = StepPlan.from_dict(plan_dict)
        local = local_batch(plan, rank, batch)
        times, computing = [], []
        for _ in range(repeat + 1):
            torch.distributed.barrier()
            start = time.perf_counter()
            with sp.step(plan, local) as stats:
                logits = model(local.tokens[None], local.cu_seqlens)
                token_losses(logits, local.labels[None])[0].backward()
            times.append(time.perf_counter() - start)
            computing.append(times[-1] - stats.seconds)  # less the waits for messages
            model.zero_grad()
        out[name] = {
            "tokens": local.tokens.numel(),
            "seconds": statistics.median(times[1:]),
            "compute": statistics.median(computing[1:]),
        }
    return out


MEASURED_MODEL = [
    "model.mixer=gdn", "model.layer_pattern=gdn,attn", "model.d_model=64", "model.n_layers=2", "model.n_heads=2",
    "model.gdn_head_dim=16", "model.attn_heads=4", "model.attn_kv_heads=2", "model.attn_head_dim=32",
    "model.chunk_size=32", "model.attn_block=256",
]  # fmt: skip


def measured_part(repeat: int) -> list[dict]:
    from baton.dist.local import run_local

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = load_config(None, MEASURED_MODEL).model
    world, lengths = 4, with_long_document(12288, 16384, np.random.default_rng(1))
    bounds = bounds_of(lengths)
    # The planner prices attention's pairs by FLOPs; this CPU's reference attention and scans
    # run at other speeds than a GPU's, so the FLOP ratio is what is tested here, not tuned.
    cost = CostModel.for_model(model, [1.0] * world, Interconnect())
    plans = {
        "balanced": balanced_plan(bounds, cost).plan.to_dict(),
        "equal-contiguous": equal_split_plan(bounds, cost).plan.to_dict(),
    }
    per_rank = run_local(world, measured_worker, lengths, plans, repeat)
    rows = []
    for name in plans:
        compute = [per_rank[r][name]["compute"] for r in range(world)]
        rows.append(
            {
                "plan": name,
                "tokens_per_rank": "/".join(str(per_rank[r][name]["tokens"]) for r in range(world)),
                "rank_compute_s": "/".join(f"{s:.3f}" for s in compute),
                "step_s": round(max(per_rank[r][name]["seconds"] for r in range(world)), 3),
                "compute_imbalance": round(max(compute) / (sum(compute) / world), 3),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", default=["bytes", "sim", "measured"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64, 256, 512])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    model = load_config(str(CONFIGS / "1b-hybrid.yaml")).model
    meta = {"model": "configs/1b-hybrid.yaml", "attention_layers": attention_layers(model)}
    if "bytes" in args.part:
        rows = bytes_part(model)
        print("(a) keys and values per attention layer, forward, 8 ranks x 32K tokens")
        print_table(rows, list(rows[0]))
        write_json("hybrid_sp_bytes", rows, **meta)
    if "sim" in args.part:
        print("(b) simulated step, documents 1K-128K, H100 bf16 at 40% MFU")
        rows = sim_part(model, args.ranks)
        write_json("hybrid_sp_sim", rows, **meta)
    if "measured" in args.part:
        rows = measured_part(args.repeat)
        print("(c) measured, 4 processes on this CPU (gloo), tiny GDN + attention hybrid")
        print_table(rows, list(rows[0]))
        write_json("hybrid_sp_measured", rows, model=MEASURED_MODEL)


if __name__ == "__main__":
    main()
