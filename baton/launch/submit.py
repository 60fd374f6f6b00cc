"""``baton submit``: render the sbatch script for a run, keep it and the resolved config in a
per-job run directory, and hand it to ``sbatch``. Every value that reaches the script is
shell-quoted: a config value is data, never code."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from string import Template

from baton.config import ConfigError, load_config, to_yaml
from baton.launch.preempt import DEADLINE, FLAG, REQUEUE_BY_BATCH, REQUEUE_NOTE

TEMPLATE = Path(__file__).resolve().parents[2] / "slurm" / "baton.sbatch"


class _ScriptTemplate(Template):
    delimiter = "@"  # ``@{name}``: leaves the script's own ``$VAR`` and ``${VAR:-x}`` alone


def time_limit_seconds(limit: str) -> int:
    """SLURM time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", limit)
    if not m:
        raise ConfigError(f"--time {limit!r}: expected minutes, H:M:S or D-H:M:S")
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return ((int(days) * 24 + h) * 60 + mi) * 60 + s
    if b is None:  # M
        return int(a) * 60
    if c is None:  # M:S
        return int(a) * 60 + int(b)
    return (int(a) * 60 + int(b)) * 60 + int(c)  # H:M:S


def render(
    config: str | None,
    overrides: list[str],
    nodes: int,
    procs_per_node: int,
    gpus_per_node: int,
    limit: str,
    partition: str | None,
    run_dir: Path,
    signal_s: int,
    port: int,
) -> str:
    q = shlex.quote
    extra = []
    if gpus_per_node:
        extra.append(f"#SBATCH --gpus-per-node={gpus_per_node}")
    if partition:
        extra.append(f"#SBATCH --partition={q(partition)}")
    values = {
        "job_name": q(f"baton-{run_dir.name}"),
        "nodes": str(nodes),
        "time": q(limit),
        "time_s": str(time_limit_seconds(limit)),
        "log": q(str(run_dir / "logs" / "slurm-%j.out")),
        "signal_s": str(signal_s),
        "extra_directives": "\n".join(extra),
        "preempt_flag": q(str(run_dir / FLAG)),
        "requeue_note": q(str(run_dir / REQUEUE_NOTE)),
        "requeue_by_batch": REQUEUE_BY_BATCH,
        "deadline": DEADLINE,
        "port": str(port),
        "python": q(sys.executable),
        "procs_per_node": str(procs_per_node),
        "config": q(config) if config else "",
        "run_dir_override": q(f"train.run_dir={run_dir}"),
        "overrides": " ".join(q(o) for o in overrides if not o.startswith("train.run_dir=")),
    }
    return _ScriptTemplate(TEMPLATE.read_text()).substitute(values)


def submit(
    config: str | None,
    overrides: list[str],
    nodes: int,
    gpus_per_node: int,
    procs_per_node: int | None,
    limit: str,
    partition: str | None,
    dry_run: bool,
    signal_s: int = 120,
    port: int = 29400,
) -> Path:
    """Write ``<run_dir>/job.sbatch`` and ``<run_dir>/config.yaml``; sbatch unless ``dry_run``."""
    cfg = load_config(config, overrides)  # a bad config fails here, not in the queue
    run_dir = Path(cfg.train.run_dir).resolve()
    if cfg.train.run_dir == "runs/default":  # one directory per job unless asked otherwise
        run_dir = run_dir.parent / f"job-{time.strftime('%Y%m%d-%H%M%S')}"
    procs = procs_per_node or gpus_per_node or 1
    script = render(config, overrides, nodes, procs, gpus_per_node, limit, partition, run_dir, signal_s, port)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "job.sbatch").write_text(script)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    if dry_run:
        print(script)
        return run_dir
    proc = subprocess.run(["sbatch", "--parsable", str(run_dir / "job.sbatch")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"sbatch refused {run_dir / 'job.sbatch'}: {proc.stderr.strip()}")
    job = proc.stdout.strip().split(";")[0]
    (run_dir / "job_id").write_text(job + "\n")
    print(f"submitted job {job}; run directory {run_dir}")
    return run_dir
