"""Training throughput, eager against compiled (``train.compile``): a few steps of ``baton train``
per case, read back from the run's own records.

python bench/throughput.py [--config configs/tiny-cpu.yaml] [--tokens 4096] [--modes eager compiled]
                           [--steps 6] [--limit 600] [--restart] [--tuning FILE] [key=value ...]

Per case: the first step's seconds (what a start pays: compilation, kernel tuning), then tokens
per second and MFU over the later steps (after the first two: a compiled block recompiles once
when the number of documents changes, then has dynamic shapes). ``--restart`` runs each case
a second time from its checkpoint, in the same run directory, with the kernel tuning file and
Triton's compiled kernels the first start left there (``launch/setup.py:keep_compiled_code``)
and Inductor's cache on this node: the first step of a restart. ``--tuning``: a ``tuning.json``
(``baton tune``) copied into every case's run directory.
Cases run one after the other, each killed after ``--limit`` seconds, and print as they end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

COLUMNS = ["config", "tokens", "mode", "start", "exit", "first_step_s", "settings_timed", "tok/s", "mfu", "peak_GiB"]


def run_case(args, tokens: int, mode: str, run_dir: Path, restart: bool) -> dict:
    steps = 2 * args.steps if restart else args.steps
    overrides = [
        f"data.tokens_per_batch={tokens}", f"train.steps={steps}", f"train.stop_at_step={steps}", "train.log_every=1",
        "train.eval_every=100000", "data.eval_batches=1", f"checkpoint.every={args.steps}",
        f"train.compile={mode == 'compiled'}", f"train.run_dir={run_dir}", f"data.cache_dir={args.data}",
        *(["resume=auto"] if restart else []), *args.overrides,
    ]  # fmt: skip
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "baton.launch.cli", "train", args.config, *overrides],
            capture_output=True, text=True, timeout=args.limit, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
        code, tail = proc.returncode, proc.stderr[-1500:]
    except subprocess.TimeoutExpired:
        code, tail = "timeout", ""
    row = {"config": Path(args.config).stem, "tokens": tokens, "mode": mode, "start": "restart" if restart else "first"}
    row["exit"], row["wall_s"] = code, round(time.perf_counter() - started, 1)
    records = run_dir / "profile" / "rank0.jsonl"
    steps_done = [json.loads(line) for line in records.read_text().splitlines()] if records.is_file() else []
    steps_done = steps_done[args.steps :] if restart else steps_done
    later = steps_done[2:] or steps_done[1:]
    if later:
        row["tok/s"] = round(sum(s["tokens"] for s in later) / sum(s["step_s"] for s in later))
        mfu = [s["mfu"] for s in later if s.get("mfu") is not None]
        row["mfu"] = round(sum(mfu) / len(mfu), 3) if mfu else None
        peaks = [s["peak_mem_gb"] for s in steps_done if s.get("peak_mem_gb") is not None]
        row["peak_GiB"] = round(max(peaks), 2) if peaks else None
    summary = run_dir / "summary.json"
    if summary.is_file():
        row |= {k: v for k, v in json.loads(summary.read_text()).items() if k in ("first_step_s", "settings_timed")}
        row["first_step_s"] = round(row["first_step_s"], 2)
    if code != 0:
        row["error"] = tail
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny-cpu.yaml")
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096], help="tokens per step (one rank)")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--limit", type=int, default=600, help="seconds before a case is killed")
    parser.add_argument("--restart", action="store_true", help="also run each case again from its checkpoint")
    parser.add_argument("--tuning", type=Path, help="a tuning.json to copy into every run directory")
    parser.add_argument("--work", type=Path, default=Path("/tmp/baton-throughput"), help="run directories")
    parser.add_argument("overrides", nargs="*", help="config overrides for every case")
    args = parser.parse_args()
    args.data = args.work / "data"
    rows = []
    for tokens in args.tokens:
        for mode in args.modes:
            run_dir = args.work / f"{Path(args.config).stem}-{tokens}-{mode}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            if args.tuning and args.tuning.is_file():
                shutil.copy(args.tuning, run_dir / "tuning.json")
            elif args.tuning:
                print(f"no {args.tuning}: the first step tunes", flush=True)
            for restart in [False, True] if args.restart else [False]:
                rows.append(run_case(args, tokens, mode, run_dir, restart))
                print(json.dumps(rows[-1]), flush=True)
    print()
    print_table(rows, COLUMNS)
    write_json("throughput", rows, config=args.config, overrides=args.overrides)


if __name__ == "__main__":
    main()
