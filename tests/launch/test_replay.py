"""`baton replay`: one process recomputes a logged step of a multi-rank run from its
checkpoint and data cursor, and compares loss and gradient norm with the log."""

import pytest

from baton.launch.cli import main
from baton.launch.replay import relative, replay_step
from tests.launch.runs import baton_train

pytestmark = pytest.mark.runs

# Two ranks share each packed stream; checkpoints at steps 2 and 3 (the last).
TWO_RANKS = ["train.steps=3", "train.eval_every=100", "checkpoint.every=2", "parallel.sp.size=2"]


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory, data_dir):
    return baton_train(tmp_path_factory.mktemp("chain"), data_dir, 2, *TWO_RANKS, "parallel.sp.relay=chain")


def test_a_sequence_parallel_run_logs_what_one_process_computes(chain_run):
    for step in (1, 3):  # from the seeded initial weights, and from the checkpoint of step 2
        replay = replay_step(chain_run, step)
        assert replay.world_size == 2 and replay.dtype == "float32"
        # fp32: the two ranks sum the same products in another order (a relayed state, an
        # all-reduce), ~1e-7 relative; a dropped state moves the gradient norm by over 1e-4
        # (the next test).
        assert relative(replay.loss, replay.logged_loss) < 1e-5, replay
        assert relative(replay.grad_norm, replay.logged_grad_norm) < 1e-5, replay


def test_the_inexact_baseline_is_caught(tmp_path, data_dir):
    # `concat` cuts the stream evenly and drops the state at each cut inside a document: one
    # cut in a batch of a few thousand tokens, near the initial weights, moves the loss by
    # ~1e-6 but the gradient norm by ~1e-3.
    run = baton_train(tmp_path / "run", data_dir, 2, *TWO_RANKS, "parallel.planner.kind=concat")
    replay = replay_step(run, 3)
    assert relative(replay.grad_norm, replay.logged_grad_norm) > 1e-4, replay
    assert main(["replay", str(run), "--step", "3", "--rtol", "1e-5"]) == 1


def test_command_line_and_errors(chain_run, capsys):
    assert main(["replay", str(chain_run), "--step", "3", "--rtol", "1e-5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"step 3 of {chain_run}: 2 rank(s) logged it; replayed in one process") and "grad norm" in out
    assert main(["replay", str(chain_run), "--step", "2"]) == 2
    assert "no complete checkpoint of step 1, which replaying step 2 starts from (checkpoints of steps: [2, 3]" in (
        capsys.readouterr().err
    )
    assert main(["replay", str(chain_run), "--step", "4"]) == 2
    assert "metrics.jsonl: no record of step 4 (it has steps 1..3)" in capsys.readouterr().err
