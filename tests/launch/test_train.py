"""End to end on one process: the CLI trains, the loss falls, user mistakes are clean errors."""

import json
import subprocess
import sys

import pytest

from baton.config import ConfigError, load_config
from baton.launch.cli import main
from baton.launch.setup import pick_device

pytestmark = pytest.mark.runs


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


def tiny_run(tmp_path, *overrides: str) -> list[str]:
    return [
        "train",
        "data.synthetic_docs=200",
        "data.eval_docs=20",
        "data.tokens_per_batch=512",
        "train.eval_every=100",
        f"data.cache_dir={tmp_path}",
        f"train.run_dir={tmp_path / 'run'}",
        *overrides,
    ]


def steps_and_losses(path):
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines())]


def test_rerun_resume_and_restart_of_a_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_run(tmp_path, "train.steps=3", "checkpoint.every=2")) == 0
    first = steps_and_losses(run / "metrics.jsonl")
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert [s for s, _ in first] == [1, 2, 3] and checkpoints == ["step_00000002", "step_00000003"]

    # Starting over would overwrite the checkpoints: refused, nothing touched.
    assert main(tiny_run(tmp_path, "train.steps=3", "checkpoint.every=2")) == 2
    assert "holds an earlier run's checkpoints (newest: step_00000003)" in capsys.readouterr().err
    assert steps_and_losses(run / "metrics.jsonl") == first

    # Resuming a run that has finished trains nothing and changes nothing.
    assert main(tiny_run(tmp_path, "train.steps=3", "checkpoint.every=2", "resume=auto")) == 0
    assert "nothing to train: the run is at step 3 and ends at step 3" in capsys.readouterr().out
    assert steps_and_losses(run / "metrics.jsonl") == first

    # Resuming an older checkpoint retrains step 3: its records replace the earlier ones, and
    # the step's loss is the same (one process, fp32: bitwise).
    resume = f"resume={run / 'checkpoints' / 'step_00000002'}"
    assert main(tiny_run(tmp_path, "train.steps=3", "checkpoint.every=2", resume)) == 0
    # Step 3's record in metrics.jsonl, in profile/rank0.jsonl and in the interval summary.
    assert "dropped 3 records of steps after 2" in capsys.readouterr().out
    assert steps_and_losses(run / "metrics.jsonl") == first
    profile = (run / "profile" / "rank0.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in profile] == [1, 2, 3]


def test_divergence_stops_before_the_step_with_the_checkpoints_intact(tmp_path, capsys):
    # A learning rate of 1e30 (unclipped) turns the weights to garbage at step 1; step 2's
    # gradients are then not finite.
    args = tiny_run(tmp_path, "train.steps=5", "optim.lr=1e30", "optim.warmup_steps=0", "optim.grad_clip=0")
    assert main([*args, "checkpoint.every=1"]) == 1
    err = capsys.readouterr().err
    assert "baton: error: step 2: the gradient norm is nan; training stopped before the optimizer step" in err
    assert f"the newest checkpoint is {tmp_path / 'run' / 'checkpoints' / 'step_00000001'}" in err
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000001"]
    assert [s for s, _ in steps_and_losses(tmp_path / "run" / "metrics.jsonl")] == [1]


def test_gradient_norm_is_logged_and_clipping_zero_is_off(tmp_path):
    def run(name: str, clip: str) -> list[dict]:
        args = tiny_run(tmp_path, "train.steps=3", f"optim.grad_clip={clip}", f"train.run_dir={tmp_path / name}")
        assert main(args) == 0
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    off, unbounded, tight = run("off", "0"), run("unbounded", "1e9"), run("tight", "0.01")
    assert all(r["grad_norm"] > 0.01 for r in off)  # so a 0.01 clip changes every step
    assert [r["loss"] for r in off] == [r["loss"] for r in unbounded]
    assert [r["grad_norm"] for r in off] == [r["grad_norm"] for r in unbounded]
    assert tight[0]["loss"] == off[0]["loss"] and tight[1]["loss"] != off[1]["loss"]
