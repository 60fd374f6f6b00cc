"""Kernel tuning is paid once: the autotuner's choices, kept in the run directory (by the run
itself or by ``baton tune``), make a later start time no candidate. Counted, not timed: the
kernels run under Triton's interpreter with tuning forced on (``BATON_AUTOTUNE=1``), where
each candidate setting timed is one run of the kernel, counted by baton's benchmark hook."""

import json
import os
import subprocess
import sys

import pytest

from tests.launch.runs import baton_train, jsonl

pytestmark = [pytest.mark.runs, pytest.mark.interpret]

TUNED = {"TRITON_INTERPRET": "1", "BATON_AUTOTUNE": "1"}
SHAPE = ["model.d_model=32", "model.n_heads=1", "model.n_layers=1", "model.chunk_size=16", "train.kernels=triton"]
STEPS = ["data.tokens_per_batch=256", "data.eval_batches=1", "train.steps=3", "train.eval_every=100"]


def train(tmp_path, run: str, *overrides: str) -> dict:
    """One start of a run; its summary (what the start paid) and how many choices the file holds."""
    run_dir = baton_train(tmp_path / run, tmp_path / "data", 1, *SHAPE, *STEPS, *overrides, env=TUNED)
    summary = json.loads((run_dir / "summary.json").read_text())
    kernels = json.loads((run_dir / "tuning.json").read_text())["kernels"]
    return summary | {"in_file": sum(len(entries) for entries in kernels.values())}


def test_tuning_is_paid_once(tmp_path):
    run = tmp_path / "run"
    tuned = subprocess.run(
        [sys.executable, "-m", "baton.launch.cli", "tune", *SHAPE, f"train.run_dir={run}"],
        capture_output=True, text=True, env=dict(os.environ, **TUNED), timeout=600,
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert "launch settings timed" in tuned.stdout
    # A job after `baton tune` times nothing.
    job = train(tmp_path, "run", "train.stop_at_step=1")
    assert job["tuning_loaded"] == job["in_file"] > 0 and job["settings_timed"] == 0
    # Choices made on another GPU model are not used: the start tunes, and saves its own.
    path = run / "tuning.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"device": "NVIDIA H100 80GB HBM3"}))
    other = train(tmp_path, "run", "train.stop_at_step=2", "resume=auto")
    assert other["tuning_loaded"] == 0 and other["settings_timed"] > 0
    assert "was tuned on NVIDIA H100 80GB HBM3" in (run / "logs" / "rank0.log").read_text()
    # A restart loads what the run itself saved and times nothing.
    again = train(tmp_path, "run", "resume=auto")
    assert again["tuning_loaded"] == other["in_file"] > 0 and again["settings_timed"] == 0
    assert [m["step"] for m in jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_baton_tune_refuses_the_reference_kernels(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "baton.launch.cli", "tune", "train.kernels=torch", f"train.run_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "baton: error: baton tune: train.kernels=torch on cpu runs the PyTorch references, which have nothing to "
        "tune (a CUDA device, or train.kernels=triton under TRITON_INTERPRET=1)"
    ]
