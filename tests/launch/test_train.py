"""End to end on one process: the CLI trains, the loss falls, user mistakes are clean errors."""

import json
import subprocess
import sys

import pytest

from baton.launch.cli import main
from baton.launch.config import ConfigError, load_config
from baton.launch.train import pick_device


def test_short_run_loss_falls(tmp_path):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "train.steps=40",
            "train.eval_every=20",
            "train.log_every=10",
            "data.synthetic_docs=500",
            f"data.cache_dir={tmp_path}",
            f"train.run_dir={run}",
            "data.eval_docs=20",
            "data.tokens_per_batch=2048",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 40
    first = sum(r["loss"] for r in records[:5]) / 5
    last = sum(r["loss"] for r in records[-5:]) / 5
    assert last < first - 1.0, (first, last)
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["tokens"] == sum(r["tokens"] for r in records)


def test_config_error_exits_2_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "baton.launch.cli", "train", "model.mixr=gla"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "baton: error: model.mixr" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_corpus_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "baton.launch.cli", "train", f"data.path={tmp_path}/none"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "none/meta.json: not found" in proc.stderr


def test_torch_profiler_trace_of_chosen_steps(tmp_path):
    run = tmp_path / "run"
    overrides = [
        "train.steps=3",
        "data.synthetic_docs=200",
        "data.eval_docs=20",
        "data.tokens_per_batch=512",
        f"data.cache_dir={tmp_path}",
        f"train.run_dir={run}",
        "profile.trace_ranks=[0]",
        "profile.trace_steps=[2,3]",
    ]
    assert main(["train", *overrides]) == 0
    trace = json.loads((run / "profile" / "trace_rank0_steps2-3.json").read_text())
    assert any("aten::" in e.get("name", "") for e in trace["traceEvents"])


def test_chunk_size_the_triton_kernels_cannot_run_is_a_config_error():
    # conftest sets TRITON_INTERPRET=1 on CPU, so train.kernels=triton is allowed here.
    with pytest.raises(ConfigError, match="model.chunk_size: the Triton kernels need one of 16, 32, 64, 128, got 48"):
        pick_device(load_config(None, ["train.kernels=triton", "model.chunk_size=48"]))
    pick_device(load_config(None, ["train.kernels=torch", "model.chunk_size=48"]))  # the reference takes any size
