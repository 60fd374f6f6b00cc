"""Newton-trained RNNs (ParaGRU, ParaLSTM): the parallel solve against the sequential loop, how
fast Newton converges, and a short training comparison with GLA.

python bench/newton_rnn.py [--parts timing residual training] [--lengths 1024 ... 65536]
                           [--heads 4] [--head-dim 64] [--steps 200] [--seq-limit 70]

- timing: forward + backward seconds of one layer's recurrence (the cell over H heads of D
  units, its pre-activations given) solved by Newton's method (the default 3 iterations, the
  scans on this machine's path: the reference on CPU, Triton on a GPU) and by the cell applied
  token after token with autograd through the loop; T from 1K to 64K tokens, one document.
  The loop is skipped where its previous length took over ``--seq-limit`` seconds.
- residual: ‖h − f(h)‖ / ‖h‖ and the largest deviation from the loop (relative to the largest
  state) after 1-5 iterations, on the real pre-activations of a trained model's first layer:
  at initialisation and after the training part's steps (the training part runs first).
- training: ``baton train`` on the default job (configs/tiny-cpu.yaml, synthetic corpus) for
  ``--steps`` steps with model.mixer = gla, paragru, paralstm; the Newton mixers with one head
  (461K parameters against GLA's 466K); train and eval loss at equal steps, tokens/s.

Prints a table per part and writes bench/out/newton_rnn.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, time_it, write_json  # noqa: E402

from baton.models.newton import newton_recurrence, sequential_recurrence  # noqa: E402
from baton.models.paragru import GRU  # noqa: E402
from baton.models.paralstm import LSTM  # noqa: E402

CELLS = {"paragru": GRU, "paralstm": LSTM}
REPO = Path(__file__).resolve().parent.parent


def layer_inputs(cell, T: int, H: int, D: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(1, T, H, 3, D, generator=gen).to(device).requires_grad_()
    params = tuple((torch.rand(H, D, generator=gen) - 0.5).to(device).requires_grad_() for _ in range(3))
    return u, params


def newton_step(cell, u, params, cu) -> None:
    h, _ = newton_recurrence(cell, u, params, None, cu)
    torch.autograd.grad(h.sum(), [u, *params])


def sequential_step(cell, u, params, cu) -> None:
    h = sequential_recurrence(cell, u, params, None, cu)
    torch.autograd.grad(h.sum(), [u, *params])


def timing(args, device: torch.device) -> list[dict]:
    rows = []
    for name, cell in CELLS.items():
        sequential_s = 0.0
        for T in args.lengths:
            u, params = layer_inputs(cell, T, args.heads, args.head_dim, device)
            cu = torch.tensor([0, T])
            runs = (1, 0) if T > 16384 else (3, 1)  # (repeat, warmup): one run of minutes on a CPU
            newton = time_it(partial(newton_step, cell, u, params, cu), *runs)
            row = {"cell": name, "T": T, "newton_s": round(newton, 4)}
            if sequential_s <= args.seq_limit:
                sequential_s = time_it(partial(sequential_step, cell, u, params, cu), repeat=1, warmup=0)
                row |= {"sequential_s": round(sequential_s, 3), "speedup": round(sequential_s / newton, 1)}
            rows.append(row)
            print_table([row], list(row))
    return rows


def train(mixer: str, steps: int, run_dir: Path) -> tuple[list[dict], float]:
    overrides = [
        f"model.mixer={mixer}", f"train.steps={steps}", f"train.run_dir={run_dir}", "train.log_every=25",
        f"train.eval_every={steps}", f"checkpoint.every={steps}",
        *(["model.n_heads=1"] if mixer != "gla" else []),
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "baton.launch.cli", "train", "configs/tiny-cpu.yaml", *overrides],
                   cwd=REPO, check=True, capture_output=True)  # fmt: skip
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records, time.perf_counter() - started


def training(args, root: Path) -> list[dict]:
    rows = []
    for mixer in ("gla", "paragru", "paralstm"):
        records, wall = train(mixer, args.steps, root / mixer)
        row = {"mixer": mixer}
        for at in sorted({s for s in (50, 100, args.steps) if s <= args.steps}):
            window = [r["loss"] for r in records if at - 10 < r["step"] <= at]
            row[f"loss@{at}"] = round(sum(window) / len(window), 4)  # the mean of the 10 steps up to it
        row["eval_loss"] = round(records[-1]["eval_loss"], 4)
        speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
        row["tok/s"] = round(sum(speeds[1:]) / max(1, len(speeds) - 1))
        row["wall_s"] = round(wall)
        rows.append(row)
        print_table([row], list(row))
    return rows


def first_layer_problem(run_dir: Path | None, mixer: str):
    """A model of the default job's shape (trained from ``run_dir`` if given), and its first
    layer's cell inputs on a held-out batch of the synthetic corpus."""
    from baton.checkpoint.export import load_model
    from baton.checkpoint.store import latest_checkpoint
    from baton.config import load_config
    from baton.models.lm import RecurrentLM

    if run_dir is None:
        cfg = load_config(str(REPO / "configs/tiny-cpu.yaml"), [f"model.mixer={mixer}", "model.n_heads=1"]).model
        torch.manual_seed(0)
        model = RecurrentLM(cfg)
    else:
        model = load_model(latest_checkpoint(run_dir / "checkpoints"))
        cfg = model.cfg
    tokens = torch.randint(0, cfg.vocab_size, (1, 2048), generator=torch.Generator().manual_seed(5))
    mixer_module = model.blocks[0].mixer
    with torch.no_grad():
        x = model.blocks[0].mixer_norm(model.embed(tokens))
        u = mixer_module._pre_activations(x)
    return mixer_module.cell, u, tuple(mixer_module.recurrent.detach().float().unbind(0))


def residuals(args, root: Path | None) -> list[dict]:
    rows = []
    for mixer in ("paragru", "paralstm"):
        for stage in ("init", f"after {args.steps} steps"):
            run_dir = None if stage == "init" else root / mixer
            if run_dir is not None and not (run_dir / "checkpoints").is_dir():
                continue
            cell, u, params = first_layer_problem(run_dir, mixer)
            with torch.no_grad():
                exact = sequential_recurrence(cell, u, params)
            row = {"mixer": mixer, "model": stage}
            for k in range(1, 6):
                with torch.no_grad():
                    h, residual = newton_recurrence(cell, u, params, iterations=k, check=True)
                deviation = ((h - exact).abs().max() / exact.abs().max()).item()
                row[f"K={k}"] = f"{residual.item():.1e} / {deviation:.1e}"
            rows.append(row)
            print_table([row], list(row))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["timing", "training", "residual"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384, 65536])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seq-limit", type=float, default=70.0)
    parser.add_argument("--runs", type=Path, default=None, help="where the training runs go (default: a temp dir)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = args.runs or Path(tempfile.mkdtemp(prefix="baton-newton-"))
    out = {"device": str(device), "args": {k: str(v) for k, v in vars(args).items()}}
    if "timing" in args.parts:
        out["timing"] = timing(args, device)
    if "training" in args.parts:
        out["training"] = training(args, root)
    if "residual" in args.parts:
        print("residual ‖h − f(h)‖/‖h‖ / max deviation from the loop, first layer, 2048 tokens")
        out["residual"] = residuals(args, root)
    write_json("newton_rnn", out)


if __name__ == "__main__":
    main()
