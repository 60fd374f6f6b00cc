"""The per-rank memory budget: engine states by engine, stage and world size; what fits; and
``baton memory``, whose refusal is one line naming the numbers and the keys to change."""

import subprocess
import sys

import pytest

from baton.config import ConfigError, load_config
from baton.launch.cli import main
from baton.models.flops import count_parameters
from baton.parallel.budget import GIB, MemoryBudget, check_fits, engine_state_bytes
from tests.conftest import CONFIGS

ONE_B = str(CONFIGS / "1b.yaml")


def states(world, *overrides, p=2):
    return sum(engine_state_bytes(load_config(ONE_B, list(overrides)), world, p).values())


def test_engine_states_follow_the_zero_accounting():
    N = count_parameters(load_config(ONE_B).model)
    # Replicated: fp32 weights, gradients, two Adam moments, and autocast's bf16 copy of the weights.
    assert states(8) == 18 * N and states(8, p=4) == 16 * N
    # Sharding divides what is sharded: FSDP2 everything (plus the blocks in flight), DeepSpeed's
    # optimizer state from stage 1, gradients from 2, weights at 3.
    fsdp = [states(world, "parallel.zero.engine=fsdp2") for world in (2, 8, 64)]
    assert fsdp[0] > fsdp[1] > fsdp[2] and fsdp[2] < 0.5 * states(64)
    deepspeed = [states(8, "parallel.zero.engine=deepspeed", f"parallel.zero.stage={s}") for s in (1, 2, 3)]
    assert deepspeed[0] > deepspeed[1] > deepspeed[2]
    assert states(8, "parallel.zero.engine=fsdp2", "parallel.zero.stage=2") > fsdp[1]  # blocks kept unsharded
    assert states(1, "parallel.zero.engine=fsdp2") == states(1)  # one process runs unsharded


def test_checkpointing_and_micro_batches_fit_more_tokens():
    budget = lambda *o: MemoryBudget(load_config(ONE_B, list(o)), 1, 80 * GIB)  # noqa: E731
    none = budget("train.activation_checkpoint=none").max_tokens()
    full = budget("train.activation_checkpoint=full").max_tokens()
    sliced = budget("train.activation_checkpoint=full", "train.micro_tokens=8192").max_tokens()
    assert 0 < none < full < sliced
    tokens = full + full // 2  # more than fit as one piece: micro-batches make them fit
    largest = budget("train.activation_checkpoint=full").max_micro_tokens(tokens)
    assert largest and largest % 64 == 0 and largest < tokens
    fitting = budget("train.activation_checkpoint=full", f"train.micro_tokens={largest}")
    assert fitting.total(tokens) <= 80 * GIB < fitting.total(tokens, largest + 64)


def test_a_config_that_cannot_fit_is_one_line_naming_the_keys():
    overrides = ["data.tokens_per_batch=131072", "train.activation_checkpoint=none"]
    budget = MemoryBudget(load_config(ONE_B, overrides), 1, 80 * GIB)
    with pytest.raises(ConfigError) as exc:
        check_fits(budget, 131072)
    message = str(exc.value)
    assert "\n" not in message and message.startswith("131072 tokens per rank need ")
    assert "but the GPU has 80.0 GiB; try train.activation_checkpoint=full" in message
    assert f"data.tokens_per_batch <= {budget.max_tokens()}" in message


def test_a_newton_rnn_is_not_told_to_slice():
    """ParaLSTM at the 1.3B shape cannot take micro-batches: the refusal suggests the rest."""
    overrides = ["model.mixer=paralstm", "model.n_heads=16", "train.activation_checkpoint=full"]
    budget = MemoryBudget(load_config(ONE_B, overrides), 1, 80 * GIB)
    with pytest.raises(ConfigError) as exc:
        check_fits(budget, 4 * budget.max_tokens())
    assert "train.micro_tokens" not in str(exc.value) and "data.tokens_per_batch <= " in str(exc.value)


def test_baton_memory_prints_what_one_rank_holds(capsys):
    args = ["train.activation_checkpoint=full", "data.tokens_per_batch=65536", "--gpu-memory", "80"]
    assert main(["memory", ONE_B, *args]) == 0
    out = capsys.readouterr().out
    assert "one rank of 1: none, bf16, train.activation_checkpoint=full" in out and "on 80.00 GiB: fits" in out
    assert "activation bytes per token: 4096 per layer, 4100 for the head and loss" in out  # 2 d and 2 d + 4


def test_baton_memory_refuses_what_cannot_fit():
    cmd = [sys.executable, "-m", "baton.launch.cli", "memory", ONE_B, "--gpu-memory", "40", "--world", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "but the GPU has 40.0 GiB" in proc.stderr


def test_baton_memory_counts_a_hybrids_attention(capsys):
    """The 1.3B hybrid on 8 GPUs of 80 GB: what fits, with attention's backward scores over a
    block of queries and a continued document's keys and values in the workspace."""
    hybrid = str(CONFIGS / "1b-hybrid.yaml")
    assert main(["memory", hybrid, "--world", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "one rank of 8" in out and "loss logits, attention)" in out and "on 80.00 GiB: fits" in out
    cfg = load_config(hybrid)
    plain = MemoryBudget(load_config(hybrid, ["model.layer_pattern=gdn"]), 8, 80 * GIB)
    budget, tokens = MemoryBudget(cfg, 8, 80 * GIB), 65536
    m = cfg.model
    scores = 3 * 4 * m.attn_heads * m.attn_block * 2 * tokens  # fp32 scores, probabilities, their gradient
    prefix = 5 * tokens * m.attn_kv_heads * 2 * m.attn_head_dim * 2  # 5 attention layers, bf16
    assert budget.workspace(tokens, 0) - plain.workspace(tokens, 0) >= scores + prefix
