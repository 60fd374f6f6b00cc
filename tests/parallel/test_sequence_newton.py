"""Sequence parallelism of Newton-trained RNNs is exact: real processes (gloo) against one process
running the same Newton iterations on the same stream.

ParaGRU and ParaLSTM, 2, 3 and 4 ranks, every relay strategy, over the scenarios of
``test_sequence.py`` (a document spanning every rank with uneven cuts, random documents and cuts,
a cut on a document boundary, two independent chains in one step): each rank's logits, the loss
and every parameter gradient within 1e-5 (fp32; the runs differ in summation order: the relayed
solves add the incoming state's part to a scan from zero, the single process scans from it).
"""

from __future__ import annotations

import pytest
import torch.distributed as dist

from baton.dist.local import run_local
from baton.models.flops import relay_messages_per_hop, scan_shape
from baton.parallel.plan import StepPlan, local_batch
from baton.parallel.recompute import apply_activation_checkpointing
from baton.parallel.sequence import SequenceParallel, apply_sequence_parallel
from tests.helpers import make_batch, tiny_model
from tests.parallel.test_sequence import RELAYS, assert_match_one_process, scenarios, sp_worker, step_and_reduce

pytestmark = pytest.mark.ranks

NEWTON = ("paragru", "paralstm")


@pytest.mark.parametrize("world", [2, 3, 4])
def test_outputs_loss_and_gradients_match_single_process(world):
    cases, keys = [], []
    for name, (lengths, plan) in scenarios(world).items():
        if name == "conv_window":  # no conv: the same as "spanning" here
            continue
        for mixer in NEWTON:
            for relay in RELAYS:
                cases.append((mixer, relay, lengths, plan.to_dict()))
                keys.append((name, mixer, relay, lengths, plan))
    assert_match_one_process(world, keys, run_local(world, sp_worker, cases))


def checkpointed_worker(rank: int, world: int, mixer: str, relay: str, lengths: list[int], plan_dict: dict) -> dict:
    """A step with every block recomputed in backward: its results and what each rank sent."""
    model = tiny_model(mixer)
    sp = SequenceParallel(rank, world, relay)
    apply_sequence_parallel(model, sp)
    apply_activation_checkpointing(model, "full", sp.record)
    batch, plan = make_batch(lengths), StepPlan.from_dict(plan_dict)
    local = local_batch(plan, rank, batch)
    with sp.step(plan, local) as stats:
        result = step_and_reduce(model, local, batch)
    dist.barrier()
    return {**result, "comm": stats.to_dict()}


@pytest.mark.parametrize("mixer", NEWTON)
def test_checkpointed_layers_send_each_message_once(mixer):
    """Full checkpointing on 3 ranks, chain: still exact, and rank 0 of a chain over every rank
    sends per layer the first guess's state and one state per Newton iteration forward (what
    the planner prices per layer, ``relay_messages_per_hop`` less the backward's), not twice that: the
    recomputed forward replays what it received."""
    world = 3
    lengths, plan = scenarios(world)["spanning"]
    per_rank = run_local(world, checkpointed_worker, mixer, "chain", lengths, plan.to_dict())
    assert_match_one_process(world, [("spanning", mixer, "chain", lengths, plan)], [[r] for r in per_rank])
    cfg = tiny_model(mixer).cfg
    H, K, V = scan_shape(cfg)
    comm = per_rank[0]["comm"]
    assert comm["sent"]["layer0.scan"] == (relay_messages_per_hop(cfg) // cfg.n_layers - 1) * 4 * H * K * V
    assert per_rank[1]["comm"]["sent"]["layer0.scan.grad"] == 4 * H * K * V  # the adjoint, back


def test_triton_solves_match_single_process_on_the_reference():
    """Newton's scans as Triton kernels (interpreted on CPU) on 2 ranks, both cells, against
    one process on the references: 1e-5, as the reference (the kernels' fp32 sums differ in order)."""
    pytest.importorskip("triton")
    lengths, plan = scenarios(2)["random"]
    cases = [(mixer, "chain", lengths, plan.to_dict()) for mixer in NEWTON]
    keys = [("random", mixer, "chain", lengths, plan) for mixer in NEWTON]
    assert_match_one_process(2, keys, run_local(2, sp_worker, cases, False, "triton"))
