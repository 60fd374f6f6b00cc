"""Planner simulator: predicted step time, load imbalance, relay traffic and solver time of
the adaptive planner against the baselines, over long-tailed document-length distributions
and 8..1024 ranks, with and without a few ranks 20% slower.

    python bench/planner_sim.py [--ranks 8 64 256 1024] [--tokens-per-rank 32768]

Times come from the recurrent cost model (baton.parallel.planner.CostModel) with the 1.3B
preset's state size for relay bytes; nothing here runs a model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from baton.config import load_config  # noqa: E402
from baton.models.flops import relay_bytes_per_hop  # noqa: E402
from baton.parallel.baselines import attention_cost_plan, best_fit_groups_plan  # noqa: E402
from baton.parallel.interconnect import Interconnect  # noqa: E402
from baton.parallel.plan import PlanError  # noqa: E402
from baton.parallel.planner import CostModel, balanced_plan, concat_chunk_plan  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def documents(kind: str, total: int, rng: np.random.Generator) -> list[int]:
    """Document lengths summing to ``total`` tokens (the last one cropped)."""
    out, n = [], 0
    while n < total:
        if kind == "longtail":  # many short documents, 1% between 100K and 400K tokens
            length = int(rng.integers(100_000, 400_000)) if rng.random() < 0.01 else int(rng.lognormal(6.5, 1.4))
        elif kind == "pretrain":  # web-text-like lognormal
            length = int(rng.lognormal(7.0, 1.1))
        else:  # "giants": short documents plus a few of half a million tokens
            length = 500_000 if rng.random() < 0.002 else int(rng.lognormal(6.0, 1.0))
        length = max(1, min(length, total - n))
        out.append(length)
        n += length
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64, 256, 1024])
    parser.add_argument("--tokens-per-rank", type=int, default=32768)
    parser.add_argument("--sp-size", type=int, default=8)
    args = parser.parse_args()
    model = load_config(str(CONFIGS / "1b.yaml")).model
    p = load_config(None).parallel.planner
    hop_bytes = relay_bytes_per_hop(model)
    rows = []
    for kind in ("longtail", "pretrain", "giants"):
        for R in args.ranks:
            rng = np.random.default_rng(R)
            lengths = documents(kind, R * args.tokens_per_rank, rng)
            bounds = [0, *np.cumsum(lengths).tolist()]
            for slow in (False, True):
                seconds_per_token = np.full(R, 1e-6)
                if slow:  # a few ranks (1 in 32, at least one) 20% slower
                    seconds_per_token[rng.choice(R, size=max(1, R // 32), replace=False)] *= 1.2
                # A hop moves every layer's summary forward and state gradient back: NVLink-class
                # bandwidth inside a node of 8, InfiniBand-class between nodes (the defaults).
                cost = CostModel.for_model(model, seconds_per_token.tolist(), Interconnect.from_config(p))
                planners = {
                    "adaptive": lambda c=cost, b=bounds: balanced_plan(b, c),
                    "concat-chunk": lambda c=cost, b=bounds: concat_chunk_plan(b, c),
                    f"fixed-sp{args.sp_size}": lambda c=cost, b=bounds: best_fit_groups_plan(b, c, args.sp_size),
                    "attention-cost": lambda c=cost, b=bounds: attention_cost_plan(b, c),
                }
                results = {}
                for name, make in planners.items():
                    try:
                        results[name] = make()
                    except PlanError:
                        results[name] = None
                ours = results["adaptive"]
                for name, res in results.items():
                    row = {"docs": kind, "ranks": R, "slow": "yes" if slow else "no", "planner": name}
                    if res is None:
                        rows.append(row | {"step_ms": "infeasible"})
                        continue
                    hops = sum(
                        len(p.chain) > 1 and p.chain.index(r) < len(p.chain) - 1 for r, p in enumerate(res.plan.pieces)
                    )
                    rows.append(
                        row
                        | {
                            "step_ms": round(1e3 * max(res.predicted_s), 2),
                            "imbalance": round(res.imbalance, 4),
                            "vs_adaptive": round(max(res.predicted_s) / max(ours.predicted_s), 3),
                            "relay_MB": round(hops * hop_bytes / 1e6, 1),
                            "solver_ms": round(1e3 * res.solver_seconds, 2),
                        }
                    )
                print_table(rows[-len(results) :], list(rows[-len(results)]))
    print()
    columns = ["docs", "ranks", "slow", "planner", "step_ms", "imbalance", "vs_adaptive", "relay_MB", "solver_ms"]
    print_table(rows, columns)
    write_json(
        "planner_sim",
        rows,
        tokens_per_rank=args.tokens_per_rank,
        hop_bytes=hop_bytes,
        cost_model="CostModel defaults, 1e-6 s/token; slow ranks 1.2x",
    )


if __name__ == "__main__":
    main()
