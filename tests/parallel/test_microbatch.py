"""Sequence micro-batches are exact: real processes (gloo), each rank's piece in slices of 16
tokens (one chunk), against one process running the whole stream in one pass.

For 2 and 3 ranks (and 4 for a hybrid, sliced and checkpointed alone), each relay strategy
and every mixer (hybrids too: an attention layer's slices see their document's earlier
slices' keys and values), over test_sequence's plans (a document
spanning every rank, random documents and cuts, a cut on a document boundary or inside the conv
window, two chains in one step): every document longer than a slice crosses slice boundaries,
and the spanning one crosses rank boundaries too. Outputs, loss and every parameter gradient match in fp32 to a relative
1e-5 (the runs differ in summation order only, ~1e-7).
"""

from __future__ import annotations

import pytest

from baton.config import load_config
from baton.dist.env import DistEnv
from baton.dist.local import run_local
from baton.launch.schedule import optimizer_factory
from baton.parallel.microbatch import local_bounds, slice_cuts
from baton.parallel.parallelize import parallelize
from baton.parallel.plan import StepPlan, local_batch
from tests.helpers import make_batch, tiny_model
from tests.parallel.test_sequence import assert_match_one_process, every_case, step_and_reduce

pytestmark = pytest.mark.ranks

MICRO = ["model.chunk_size=16", "train.activation_checkpoint=full", "train.micro_tokens=16"]


def micro_worker(rank: int, world: int, cases: list[tuple], overrides: list[str]) -> list[dict]:
    """Each (mixer, relay, lengths, plan) case through ``parallelize`` with ``overrides``."""
    results = []
    for mixer, relay, lengths, plan_dict in cases:
        cfg = load_config(None, [f"parallel.sp.relay={relay}", *overrides])
        model = tiny_model(mixer)
        cfg.model = model.cfg
        make_optimizer = optimizer_factory(cfg.optim, cfg.train.steps)
        parallel = parallelize(model, cfg, DistEnv(rank, world, rank), None, make_optimizer)
        batch, plan = make_batch(lengths), StepPlan.from_dict(plan_dict)
        local = local_batch(plan, rank, batch)
        with parallel.sp.step(plan, local):
            results.append(step_and_reduce(model, local, batch))
    return results


@pytest.mark.parametrize("world", [2, 3], ids=lambda w: f"{w}ranks")
def test_slices_across_ranks_match_one_pass(world):
    cases, keys = every_case(world)
    assert_match_one_process(world, keys, run_local(world, micro_worker, cases, MICRO))


@pytest.mark.parametrize("options", [[], ["train.micro_tokens=0"]], ids=["sliced", "checkpointed"])
def test_a_hybrid_on_four_ranks_checkpointed_with_and_without_slices(options):
    """The GDN + attention hybrid on 4 ranks, every relay and scenario, under full checkpointing
    with slices of 16 tokens and without slices: what one process computes."""
    world = 4
    cases, keys = [], []
    for case, key in zip(*every_case(world)):
        if case[0] == "gdn+attn":
            cases.append(case)
            keys.append(key)
    assert_match_one_process(world, keys, run_local(world, micro_worker, cases, [*MICRO, *options]))


def test_slice_cuts_fall_on_whole_chunks_of_each_document():
    # Documents [0, 10) [10, 75) [75, 80): slices of at most 32 tokens, chunks of 16.
    bounds = [0, 10, 75, 80]
    cuts = slice_cuts(bounds, 32, 16)
    assert cuts == [0, 26, 58, 80]  # 26 = 10 + 16, 58 = 10 + 48: whole chunks into document 1
    assert all(b - a <= 32 for a, b in zip(cuts[:-1], cuts[1:]))
    assert local_bounds(bounds, 26, 58).tolist() == [0, 32]
    assert local_bounds(bounds, 58, 80).tolist() == [0, 17, 22]
    assert slice_cuts([0, 100], 200, 16) == [0, 100]  # one slice: the whole piece
    # The second cut would fall at 64, 24 tokens into document 1: back to a whole chunk, 56.
    assert slice_cuts([0, 40, 72], 32, 16) == [0, 32, 56, 72]


def test_an_attention_layers_slices_keep_memory_linear_in_the_length():
    """Under full checkpointing each slice keeps its input, the keys and values of its
    document's earlier slices among it: carried as the pieces they are, what a block keeps grows
    linearly with the document (doubling the length doubles the increment; joined into one
    tensor per slice it would grow quadratically, an increment ratio of ~4: tried)."""
    import torch

    from baton.config import ModelConfig
    from baton.models.lm import RecurrentLM
    from baton.parallel.microbatch import apply_micro_batches
    from baton.parallel.plan import LocalBatch, RankPiece
    from baton.parallel.recompute import apply_activation_checkpointing
    from baton.parallel.sequence import SequenceParallel
    from baton.profile.activations import ActivationMeter

    def kept(T: int) -> int:
        cfg = ModelConfig(
            mixer="gdn", layer_pattern="attn,gdn", d_model=64, gdn_head_dim=16, attn_heads=4, attn_head_dim=16,
            chunk_size=16,
        )  # fmt: skip
        torch.manual_seed(0)
        model = RecurrentLM(cfg)
        sp = SequenceParallel(0, 1, "chain")
        apply_activation_checkpointing(model, "full", sp.record)
        apply_micro_batches(model, sp, 16, 16)
        cu = torch.tensor([0, T])
        local = LocalBatch(torch.zeros(T, dtype=torch.long), torch.zeros(T, dtype=torch.long), cu, False, False)
        with sp.step(StepPlan([RankPiece([(0, T)])]), local), ActivationMeter() as meter:
            x = torch.randn(1, T, 64, requires_grad=True)
            y, _ = model.blocks[0](x, cu)
        return meter.alive_bytes(exclude=[*model.parameters(), y])

    a, b, c = kept(256), kept(512), kept(1024)
    assert (c - b) / (b - a) < 2.1, (a, b, c)
