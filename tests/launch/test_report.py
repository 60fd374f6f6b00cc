"""A real 2-process run writes per-rank profile records that agree with its plans, and
`baton report` renders a table and PNG plots from the run directory."""

import pytest

from baton.launch.cli import main
from tests.launch.runs import baton_train, jsonl

pytestmark = pytest.mark.runs


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    steps = ["train.steps=8", "train.log_every=4", "train.eval_every=8", "data.tokens_per_batch=1024"]
    return baton_train(tmp / "run", tmp / "data", 2, *steps, "parallel.sp.size=2")


def test_records_per_rank_match_the_plans(run_dir):
    metrics = jsonl(run_dir / "metrics.jsonl")
    for rank in range(2):
        records = jsonl(run_dir / "profile" / f"rank{rank}.jsonl")
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
    summaries = jsonl(run_dir / "profile" / "summary.jsonl")
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
