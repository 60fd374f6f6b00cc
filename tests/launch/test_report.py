"""A real 2-process run writes per-rank profile records that agree with its plans, and
`baton report` renders a table and PNG plots from the run directory."""

import json
import os
import subprocess
import sys

import pytest

from baton.launch.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "baton.launch.cli",
        "train",
        "train.steps=8",
        "train.log_every=4",
        "train.eval_every=8",
        "data.synthetic_docs=300",
        "data.eval_docs=20",
        "data.tokens_per_batch=1024",
        "parallel.sp.size=2",
        f"data.cache_dir={tmp / 'data'}",
        f"train.run_dir={tmp / 'run'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


def test_records_per_rank_match_the_plans(run_dir):
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for rank in range(2):
        records = [json.loads(line) for line in (run_dir / "profile" / f"rank{rank}.jsonl").read_text().splitlines()]
        assert len(records) == len(metrics) == 8
        for rec, m in zip(records, metrics):
            planned = sum(b - a for a, b in m["plan"]["pieces"][rank]["spans"])
            assert rec["step"] == m["step"] and rec["rank"] == rank and rec["tokens"] == planned
            assert rec["relay_sent_bytes"] == sum(m["comm"]["sent"].values()) or rank == 1
            assert set(rec) >= {
                "step_s",
                "compute_s",
                "relay_s",
                "forward_s",
                "backward_s",
                "grad_comm_s",
                "optimizer_s",
                "tokens_per_s",
                "model_flops",
                "peak_mem_gb",
                "mfu",
            }
    summaries = [json.loads(line) for line in (run_dir / "profile" / "summary.jsonl").read_text().splitlines()]
    assert [s["steps"] for s in summaries] == [[1, 4], [5, 8]]


def test_report_renders_table_and_pngs(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["rank", "steps", "tokens/step"]
    for name in ("tokens_per_s", "step_breakdown", "mfu", "relay_bytes", "stragglers"):
        png = run_dir / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_on_a_directory_without_profile(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no rank*.jsonl records" in capsys.readouterr().err
