"""Modelled weak scaling of the relay, 8 to 4096 ranks, every strategy and ``auto``.

    python bench/sp_scaling.py [--ranks 8 16 ... 4096] [--tokens-per-rank 32768] [--tok-per-s 45000]

(a) one document spanning every rank at 32K tokens per rank, the 1.3B GLA preset
    (``configs/1b.yaml``: a 2 MiB state per layer), ZeCO's setting;
(b) the long-tail mixes of ``bench/planner_sim.py``, planned by the balanced planner.

Predicted by ``baton.parallel.scaling`` (the per-layer wavefront of every rank; interconnect
defaults of the ``parallel.planner`` keys: 10 us, NVLink 200 GB/s in a node of 8, InfiniBand
25 GB/s between nodes), at a compute speed of ``--tok-per-s`` per GPU (45K: the Gated DeltaNet
paper's figure for 1.3B models on one H100). Efficiency is the step's compute alone over the
predicted step (forward + backward; the gradient all-reduce is the same for every strategy
and left out). ``allgather`` is LASP-2's relay; ``chain/nolap`` is the chain as it was before
overlap (every layer waits for the chain before its scan). Nothing here runs a model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402
from planner_sim import documents  # noqa: E402

from baton.config import load_config  # noqa: E402
from baton.parallel.interconnect import Interconnect  # noqa: E402
from baton.parallel.plan import RankPiece, StepPlan  # noqa: E402
from baton.parallel.planner import CostModel, balanced_plan  # noqa: E402
from baton.parallel.scaling import StepModel, choose_strategy, predict_step  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BLOCKS = 8  # parallel.sp.relay_blocks for the chain here (32: a faster first pass, a longer drain every layer)
VARIANTS = {  # column: (strategy, relay blocks, overlap)
    "chain/nolap": ("chain", 1, False),
    "chain": ("chain", 1, True),
    f"chain/{BLOCKS}blk": ("chain", BLOCKS, True),
    "logscan": ("logscan", 1, True),
    "allgather": ("allgather", 1, True),
}


def spanning_plan(P: int, tokens_per_rank: int) -> tuple[StepPlan, list[int]]:
    chain = list(range(P))
    plan = StepPlan([RankPiece([(r * tokens_per_rank, (r + 1) * tokens_per_rank)], chain) for r in chain])
    return plan, [0, P * tokens_per_rank]


def mix_plan(kind: str, P: int, tokens_per_rank: int, cost: CostModel) -> tuple[StepPlan, list[int]]:
    lengths = documents(kind, P * tokens_per_rank, np.random.default_rng(P))
    bounds = [0, *np.cumsum(lengths).tolist()]
    return balanced_plan(bounds, cost).plan, bounds


def efficiencies(model: StepModel, plan: StepPlan, bounds: list[int], ideal: float) -> dict[str, float]:
    row = {}
    for name, (strategy, blocks, overlap) in VARIANTS.items():
        row[name] = ideal / predict_step(model, plan, bounds, strategy, blocks=blocks, overlap=overlap).max()
    choice, predicted = choose_strategy(model, plan, bounds, blocks=BLOCKS)
    row["auto"] = ideal / predicted[choice]
    row["auto_pick"] = choice
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2**i for i in range(3, 13)])
    parser.add_argument("--tokens-per-rank", type=int, default=32768)
    parser.add_argument("--tok-per-s", type=float, default=45_000.0)
    args = parser.parse_args()
    cfg = load_config(str(CONFIGS / "1b.yaml"))
    p = cfg.parallel.planner
    net = Interconnect.from_config(p)
    model = StepModel.for_model(cfg.model, 1.0 / args.tok_per_s, net)
    ideal = args.tokens_per_rank / args.tok_per_s
    rows = []
    for case in ("spanning", "longtail", "pretrain", "giants"):
        for P in args.ranks:
            if case == "spanning":
                plan, bounds = spanning_plan(P, args.tokens_per_rank)
            else:
                cost = CostModel.for_model(cfg.model, [1.0 / args.tok_per_s] * P, net)
                plan, bounds = mix_plan(case, P, args.tokens_per_rank, cost)
            longest = max((len(r) - 1 for r in plan.dependency_runs(bounds)), default=0)
            row = {"case": case, "ranks": P, "longest_run": longest}
            row |= {
                k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in efficiencies(model, plan, bounds, ideal).items()
            }
            rows.append(row)
            print_table([row], list(row))
    columns = ["case", "ranks", "longest_run", *VARIANTS, "auto", "auto_pick"]
    print()
    print_table(rows, columns)
    write_json(
        "sp_scaling", rows, tokens_per_rank=args.tokens_per_rank, tok_per_s=args.tok_per_s,
        interconnect=vars(net), model="configs/1b.yaml", state_bytes=model.state_bytes,
        summary_bytes=model.summary_bytes,
    )  # fmt: skip
    plot(rows)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({r["case"] for r in rows}, key=[r["case"] for r in rows].index)
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.6), sharey=True)
    for ax, case in zip(axes, cases):
        sel = [r for r in rows if r["case"] == case]
        for name in [*VARIANTS, "auto"]:
            style = {"linewidth": 2.5, "color": "black"} if name == "auto" else {}
            ax.plot([r["ranks"] for r in sel], [r[name] for r in sel], marker="o", markersize=3, label=name, **style)
        ax.set(xscale="log", title=case, xlabel="ranks", ylim=(0, 1.05))
        ax.set_xticks([r["ranks"] for r in sel][::2], labels=[str(r["ranks"]) for r in sel][::2])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("weak-scaling efficiency")
    axes[-1].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(__file__).resolve().parent / "plots" / "sp_scaling.png"  # kept in the repository
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
