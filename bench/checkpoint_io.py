"""Checkpoint save and load time on CPU processes, and what the SHA-256 manifest costs.

Each rank holds an FSDP2 (ZeRO-3) shard of a GLA model and its AdamW state after one step,
so a checkpoint is 12 bytes per parameter (weights and two moments, fp32). Timed, the
slowest rank counting, median of --repeat:
- save: a synchronous save as the trainer runs it (written, fsynced, every rank hashing its
  share of the files, committed);
- sha256: that hashing alone, again on the same files (``hash_share``, what save runs), so
  what checksums add to a save;
- load: verify (each rank checks its share against the manifest) and read;
- verify: that check alone.
The files go to --dir, which should be the file system the checkpoints will live on. The page
cache is not dropped: a save hashes what it has just written, from memory, and so does this.

    python bench/checkpoint_io.py [--layers 2 8 16] [--d-model 1024] [--world 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from baton.checkpoint.state import Checkpointer  # noqa: E402
from baton.checkpoint.store import checkpoint_files, final_dir, hash_share, verify  # noqa: E402
from baton.config import ModelConfig  # noqa: E402
from baton.dist.env import DistEnv  # noqa: E402
from baton.dist.local import run_local  # noqa: E402
from baton.models.lm import RecurrentLM  # noqa: E402
from baton.parallel.zero import apply_fsdp2  # noqa: E402


def slowest(seconds: float) -> float:
    """The slowest rank's time: a checkpoint is done when every rank is."""
    t = torch.tensor([seconds])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def timed(fn, *args) -> float:
    dist.barrier()
    start = time.perf_counter()
    fn(*args)
    return slowest(time.perf_counter() - start)


def worker(rank: int, world: int, cfg: ModelConfig, root: str, repeat: int) -> dict:
    torch.manual_seed(0)
    model = apply_fsdp2(RecurrentLM(cfg), stage=3, param_dtype=None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, cfg.vocab_size, (1, 64))
    model(tokens).float().mean().backward()
    optimizer.step()  # creates the moments, so the optimizer state is in the checkpoint
    env = DistEnv(rank, world)
    extras = {"engine": "fsdp2", "world_size": world, "model": asdict(cfg)}
    times: dict[str, list[float]] = {"save": [], "sha256": [], "load": [], "verify": []}
    ckpt = Checkpointer(Path(root), env, keep=1, async_save=False)
    for step in range(1, repeat + 1):
        times["save"].append(timed(ckpt.save, step, model, optimizer, extras))
        path = final_dir(Path(root), step)
        times["sha256"].append(timed(hash_share, path, checkpoint_files(path), rank, world))
        times["load"].append(timed(ckpt.load, path, model, optimizer, asdict(cfg)))
        times["verify"].append(timed(verify, path, rank, world))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    params = sum(p.numel() for p in model.parameters())  # DTensors count their global size
    return {"params": params, "bytes": size, **{k: statistics.median(v) for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    rows = []
    for layers in args.layers:
        cfg = ModelConfig(mixer="gla", d_model=args.d_model, n_layers=layers, n_heads=args.d_model // 128)
        root = tempfile.mkdtemp(prefix="baton-ckpt-bench-", dir=args.dir)
        try:
            result = run_local(args.world, worker, cfg, root, args.repeat, timeout=1800)[0]
        finally:
            shutil.rmtree(root, ignore_errors=True)
        gb = result["bytes"] / 1e9
        row = {"layers": layers, "params_M": round(result["params"] / 1e6, 1), "GB": round(gb, 3)}
        row |= {f"{label} s": round(result[label], 3) for label in ("save", "sha256", "load", "verify")}
        row["sha256 / save"] = f"{result['sha256'] / result['save']:.0%}"
        row["save GB/s"] = round(gb / result["save"], 2)
        rows.append(row)
        print_table(rows[-1:], list(row))
    print()
    print_table(rows, list(rows[0]))
    write_json("checkpoint_io", rows, world=args.world, d_model=args.d_model, repeat=args.repeat)


if __name__ == "__main__":
    main()
