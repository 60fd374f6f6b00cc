"""Checkpoint, stop and resume through `baton train` on real processes (torchrun, gloo).

Same world size: the losses of 2 + 2 steps with a save/resume in between equal those of 4
uninterrupted steps bitwise, and so do the final weights (CPU fp32: the same operations in
the same order). A different world size sums gradients in another order, so the losses
agree to a relative 1e-5 (fp32 round-off of a different reduction order is ~1e-7), and the
documents of every step are identical (the data cursor is global). DeepSpeed reshards
through its universal checkpoint format.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from baton.checkpoint import complete_checkpoints
from baton.checkpoint.export import load_model_state
from baton.launch.replay import relative, replay_step
from tests.launch.runs import SMALL, baton_train, jsonl

pytestmark = [pytest.mark.ranks, pytest.mark.runs]

ENGINES = {
    "none": ["parallel.zero.engine=none"],
    "fsdp2-stage3": ["parallel.zero.engine=fsdp2", "parallel.zero.stage=3"],
    "deepspeed-stage1": ["parallel.zero.engine=deepspeed", "parallel.zero.stage=1"],
    "deepspeed-stage2": ["parallel.zero.engine=deepspeed", "parallel.zero.stage=2"],
    "deepspeed-stage3": ["parallel.zero.engine=deepspeed", "parallel.zero.stage=3"],
}
STEPS = ["train.steps=4", "train.eval_every=100", "checkpoint.every=2"]


def losses(run_dir):
    return [r["loss"] for r in jsonl(run_dir / "metrics.jsonl")]


def documents(run_dir):
    return [r["doc_ids"] for r in jsonl(run_dir / "metrics.jsonl")]


def final_weights(run_dir):
    return load_model_state(complete_checkpoints(run_dir / "checkpoints")[-1])[1]


def tree_digest(root):
    """Of everything a run keeps except its logs (a failed start appends why it failed)."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if "logs" not in q.relative_to(root).parts):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    """The 4-step run of an engine on a world size, trained once per module."""
    runs = {}

    def get(engine: str, world: int):
        if (engine, world) not in runs:
            run = tmp_path_factory.mktemp(f"whole-{engine}-{world}")
            runs[engine, world] = baton_train(run, data_dir, world, *STEPS, *ENGINES[engine])
        return runs[engine, world]

    return get


# FSDP2's stage 2 writes the same DCP checkpoint as its stage 3 (tests/parallel/test_zero.py
# covers what the stages keep); DeepSpeed's stage 1 is resumed on another world size below,
# and its stage 2 after a kill.
BITWISE = ["none", "fsdp2-stage3", "deepspeed-stage3"]


@pytest.mark.parametrize("engine", BITWISE)
def test_resume_same_world_size_is_bitwise(tmp_path, data_dir, uninterrupted, engine):
    whole = uninterrupted(engine, 2)
    split = tmp_path / "split"
    baton_train(split, data_dir, 2, *STEPS, *ENGINES[engine], "train.stop_at_step=2")
    assert [p.name for p in complete_checkpoints(split / "checkpoints")] == ["step_00000002"]
    baton_train(split, data_dir, 2, *STEPS, *ENGINES[engine], "resume=auto")
    assert losses(split) == losses(whole)
    assert documents(split) == documents(whole)
    ours, theirs = final_weights(split), final_weights(whole)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_every_engine_logs_the_same_gradient_norm(uninterrupted):
    """The norm before clipping, computed by each engine over its own shards (DeepSpeed's by
    DeepSpeed): the same gradients, summed in other orders, so equal to fp32 round-off."""
    reference = torch.tensor([r["grad_norm"] for r in jsonl(uninterrupted("none", 2) / "metrics.jsonl")])
    assert (reference > 0).all()
    for engine in ENGINES:  # the 2-rank runs the other tests train anyway
        norms = torch.tensor([r["grad_norm"] for r in jsonl(uninterrupted(engine, 2) / "metrics.jsonl")])
        assert torch.allclose(norms, reference, rtol=1e-5, atol=0), engine


@pytest.mark.parametrize(
    "engine,before,after",
    [  # DCP reshards down and up; DeepSpeed's universal format is one conversion either way
        ("fsdp2-stage3", 4, 2),
        ("none", 2, 3),
        ("deepspeed-stage1", 2, 3),
    ],
)
def test_resume_on_another_world_size(tmp_path, data_dir, uninterrupted, engine, before, after):
    whole = uninterrupted(engine, before)
    split = tmp_path / "split"
    baton_train(split, data_dir, before, *STEPS, *ENGINES[engine], "train.stop_at_step=2")
    baton_train(split, data_dir, after, *STEPS, *ENGINES[engine], "resume=auto")
    assert documents(split) == documents(whole)
    ours, theirs = torch.tensor(losses(split)), torch.tensor(losses(whole))
    assert len(ours) == 4 and torch.allclose(ours, theirs, rtol=1e-5, atol=0)


@pytest.mark.parametrize("engine", ["fsdp2-stage3", "deepspeed-stage2"])
def test_kill_during_save_resumes_from_previous_checkpoint(tmp_path, data_dir, uninterrupted, engine):
    whole = uninterrupted(engine, 2)
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    cmd += ["baton.launch.cli", "train", *SMALL, f"data.cache_dir={data_dir}", f"train.run_dir={run}"]
    cmd += [*STEPS, *ENGINES[engine]]
    env = dict(os.environ, OMP_NUM_THREADS="1", BATON_TEST_KILL_IN_SAVE="1:4")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    # Rank 1 died after writing its shard of step 4: that checkpoint never committed.
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["step_00000002"]
    assert (run / "checkpoints" / "step_00000004.partial").is_dir()
    baton_train(run, data_dir, 2, *STEPS, *ENGINES[engine], "resume=auto")
    assert not (run / "checkpoints" / "step_00000004.partial").exists()
    # Steps 3 and 4 ran twice (before the kill, then after the resume); the resumed run's
    # records replace the killed attempt's, on every rank, and its losses are the same.
    assert losses(run) == losses(whole)
    for records in ("metrics.jsonl", "profile/rank0.jsonl", "profile/rank1.jsonl"):
        assert [r["step"] for r in jsonl(run / records)] == [1, 2, 3, 4], records


def test_async_save_resumes_like_sync(tmp_path, data_dir, uninterrupted):
    whole = uninterrupted("fsdp2-stage3", 2)
    split = tmp_path / "split"
    opts = [*STEPS, *ENGINES["fsdp2-stage3"], "checkpoint.async_save=true"]
    baton_train(split, data_dir, 2, *opts, "train.stop_at_step=2")
    baton_train(split, data_dir, 2, *opts, "resume=auto")
    assert losses(split) == losses(whole)


def test_micro_batches_resume_and_train_like_whole_pieces(tmp_path, data_dir, uninterrupted):
    """Both ranks in one chain, each piece in slices of 64 tokens under full checkpointing,
    stopped after step 2 and resumed: the documents and losses of the uninterrupted replicated
    run without any of that (to fp32 round-off: the same sums in other orders)."""
    whole = uninterrupted("none", 2)
    split = tmp_path / "split"
    sliced = [
        "parallel.sp.size=2",
        "parallel.sp.relay=chain",
        "train.activation_checkpoint=full",
        "train.micro_tokens=64",
    ]
    baton_train(split, data_dir, 2, *STEPS, *sliced, "train.stop_at_step=2")
    baton_train(split, data_dir, 2, *STEPS, *sliced, "resume=auto")
    assert documents(split) == documents(whole)
    ours, theirs = torch.tensor(losses(split)), torch.tensor(losses(whole))
    assert len(ours) == 4 and torch.allclose(ours, theirs, rtol=1e-5, atol=0)


@pytest.fixture
def saved_run(uninterrupted):
    return uninterrupted("fsdp2-stage3", 2)


def failing_resume(run, data_dir, *overrides, nproc=1):
    """Resume from the run's checkpoint (copied) and expect a clear error; nothing changes."""
    ckpt = complete_checkpoints(run / "checkpoints")[-1]
    before = tree_digest(run)
    launch = [sys.executable]
    if nproc > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launch, "-m", "baton.launch.cli", "train", *SMALL, f"data.cache_dir={data_dir}"]
    cmd += [f"train.run_dir={run}", *STEPS, f"resume={ckpt}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    if nproc == 1:
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    else:  # torchrun reports its workers' exit status 2 as a failure of its own
        assert proc.returncode != 0 and "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]
    assert tree_digest(run) == before
    return proc.stderr


@pytest.fixture
def damaged(tmp_path, saved_run):
    """A copy of the saved run to damage."""
    copy = tmp_path / "run"
    shutil.copytree(saved_run, copy)
    ckpt = complete_checkpoints(copy / "checkpoints")[-1]
    return copy, ckpt


def test_truncated_shard_is_refused(damaged, data_dir):
    run, ckpt = damaged
    shard = ckpt / "model" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    err = failing_resume(run, data_dir)
    assert f"{shard}: truncated or altered shard (100 bytes" in err


def test_corrupted_shard_is_refused(damaged, data_dir):
    run, ckpt = damaged
    shard = ckpt / "model" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size
    shard.write_bytes(bytes(data))
    assert f"{shard}: corrupted shard" in failing_resume(run, data_dir)


def test_corruption_found_by_one_rank_stops_every_rank(damaged, data_dir):
    run, ckpt = damaged
    names = sorted(json.loads((ckpt / "manifest.json").read_text()))
    shard = ckpt / names[1]  # rank 1's share of the hashing, with 2 ranks
    shard.write_bytes(bytes(b ^ 0xFF for b in shard.read_bytes()))
    assert failing_resume(run, data_dir, nproc=2).count(f"{shard}: corrupted shard") == 2


def test_missing_shard_is_refused(damaged, data_dir):
    run, ckpt = damaged
    shard = ckpt / "model" / "__0_0.distcp"
    shard.unlink()
    assert f"{shard}: shard missing" in failing_resume(run, data_dir)


def test_other_model_config_is_refused(damaged, data_dir):
    run, ckpt = damaged
    err = failing_resume(run, data_dir, "model.d_model=64")
    assert f"{ckpt / 'trainer.json'}: saved for a different model: model.d_model: 128 in the checkpoint, 64 now" in err


HYBRID = [
    "model.mixer=gdn", "model.layer_pattern=gdn,attn", "model.d_model=64", "model.n_heads=2",
    "model.gdn_head_dim=16", "model.attn_heads=4", "model.attn_kv_heads=2", "model.attn_head_dim=16",
    "model.chunk_size=16", "parallel.planner.kind=balanced", "parallel.sp.relay=chain",
    *ENGINES["fsdp2-stage3"],
]  # fmt: skip


def test_a_killed_hybrid_resumes_on_another_world_size(tmp_path, data_dir):
    """A GDN + attention hybrid, every rank's piece cut where the balanced planner puts it (keys
    and values exchanged across the cuts), rank 1 killed as step 3 begins on 3 ranks, resumed
    from step 2's checkpoint on 2: the documents of every step and the losses (1e-5: other
    cuts sum in other orders) of an uninterrupted 3-rank run; and `baton replay` recomputes one
    of its steps in one process (loss and gradient norm to 1e-5)."""
    whole = baton_train(tmp_path / "whole", data_dir, 3, *STEPS, *HYBRID)
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m"]
    cmd += ["baton.launch.cli", "train", *SMALL, f"data.cache_dir={data_dir}", f"train.run_dir={run}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", BATON_TEST_KILL_AT_STEP="1:3")
    proc = subprocess.run([*cmd, *STEPS, *HYBRID], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["step_00000002"]
    baton_train(run, data_dir, 2, *STEPS, *HYBRID, "resume=auto")
    assert documents(run) == documents(whole)
    ours, theirs = torch.tensor(losses(run)), torch.tensor(losses(whole))
    assert len(ours) == 4 and torch.allclose(ours, theirs, rtol=1e-5, atol=0)
    # The cuts fell inside documents: rank 0 sent keys and values on and got their gradients back.
    assert all(r["comm"]["sent"]["layer1.kv"] > 0 for r in jsonl(whole / "metrics.jsonl"))
    assert all(r["comm"]["received"]["layer1.kv.grad"] > 0 for r in jsonl(whole / "metrics.jsonl"))
    replay = replay_step(whole, 3)
    assert replay.world_size == 3 and relative(replay.loss, replay.logged_loss) < 1e-5, replay
    assert relative(replay.grad_norm, replay.logged_grad_norm) < 1e-5, replay
