"""Sequence parallelism is exact: real processes (gloo) against one process on the same stream.

For 2, 3 and 4 ranks, each relay strategy and every mixer (the delta rule with β in [0, 1]
and in [0, 2]; hybrids of GDN or SSD with a gated attention layer, grouped-query, whose keys
and values cross the cuts), over plans with random document lengths, cuts inside documents, a document
spanning every rank, uneven pieces, a cut on a document boundary, a cut inside the short
conv's window, and two independent chains in one step: outputs, loss and every
parameter gradient match a single-process run in fp32 to a relative error < 1e-5 (the two
runs differ only in summation order, ~1e-7).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

import baton.parallel.relay as relay_module
from baton.dist.local import run_local
from baton.kernels import chunk_gla, kernel_backend
from baton.models.flops import scan_shape, summary_bytes
from baton.models.lm import token_losses
from baton.parallel.plan import RankPiece, StepPlan, local_batch
from baton.parallel.sequence import RelayedScan, SequenceParallel, apply_sequence_parallel
from tests.helpers import make_batch, rel, tiny_model

pytestmark = pytest.mark.ranks

MIXERS = ("gla", "ssd", "gdn", "gdn-neg", "gdn+attn", "ssd+attn")  # gdn-neg: allow_neg_eigval; +attn: hybrids
RELAYS = ("chain", "allgather", "logscan")
TOLERANCE = 1e-5


def scenarios(world: int) -> dict[str, tuple[list[int], StepPlan]]:
    rng = np.random.default_rng(world)
    out = {}
    # One long document across every rank, short ones at both ends, uneven cuts.
    lengths = [7, 40 * world, 11]
    inner = sorted(rng.choice(np.arange(20, 40 * world - 10), size=world - 1, replace=False) + 7)
    out["spanning"] = (lengths, [0, *inner, sum(lengths)], list(range(world)))
    # Random documents, random uneven cuts.
    lengths = [int(x) for x in rng.integers(1, 60, size=4 * world)]
    total = sum(lengths)
    cuts = sorted(rng.choice(np.arange(8, total - 8), size=world - 1, replace=False))
    while any(b - a < 8 for a, b in zip([0, *cuts], [*cuts, total])):
        cuts = sorted(rng.choice(np.arange(8, total - 8), size=world - 1, replace=False))
    out["random"] = (lengths, [0, *cuts, total], list(range(world)))
    # A cut exactly on a document boundary (the relay must carry nothing across it).
    lengths = [30] * world + [13]
    out["boundary"] = (lengths, [30 * i for i in range(world)] + [sum(lengths)], list(range(world)))
    # A document starting 2 tokens before the first cut, inside the conv's 3-token window: the
    # halo the next rank receives is those 2 tokens after a zero.
    lengths = [30, 40 * world]
    out["conv_window"] = (lengths, [0, *(32 + 40 * i for i in range(world - 1)), sum(lengths)], list(range(world)))
    result = {
        name: (lengths, StepPlan([RankPiece([(a, b)], chain) for a, b in zip(edges[:-1], edges[1:])]))
        for name, (lengths, edges, chain) in out.items()
    }
    if world >= 3:
        # Two independent chains in one step: ranks 0-1 share document 1; ranks 2.. share
        # document 3 (with 4+ ranks) or rank 2 holds documents 0, 2, 3, 4 alone in two
        # separate spans (with 3 ranks).
        lengths = [9, 70, 12, 25 * (world - 2), 5]
        b = np.cumsum([0, *lengths]).tolist()
        if world == 3:
            pieces = [
                RankPiece([(b[1], b[1] + 31)], [0, 1]),
                RankPiece([(b[1] + 31, b[2])], [0, 1]),
                RankPiece([(b[0], b[1]), (b[2], b[5])], []),
            ]
        else:
            chain = list(range(2, world))
            edges = [b[2]] + [b[3] + 25 * i for i in range(1, world - 2)] + [b[5]]
            pieces = [RankPiece([(b[0], b[1] + 31)], [0, 1]), RankPiece([(b[1] + 31, b[2])], [0, 1])]
            pieces += [RankPiece([(e0, e1)], chain) for e0, e1 in zip(edges[:-1], edges[1:])]
        result["two_chains"] = (lengths, StepPlan(pieces))
    return result


def sp_worker(
    rank: int, world: int, cases: list[tuple], skip_correction: bool = False, backend: str = "auto"
) -> list[dict]:
    """Run every (mixer, relay, lengths, plan[, SequenceParallel options]) case on this rank;
    its logits, loss, grads and communication stats."""
    with kernel_backend(backend):
        if skip_correction:
            import baton.parallel.sequence as sequence

            sequence.add_incoming = lambda o, q, k, gates, state, end, scale, chunk_size: o
        results = []
        for mixer, relay, lengths, plan_dict, *options in cases:
            model = tiny_model(mixer)
            sp = SequenceParallel(rank, world, relay, **(options[0] if options else {}))
            apply_sequence_parallel(model, sp)
            batch, plan = make_batch(lengths), StepPlan.from_dict(plan_dict)
            plan.validate(batch.n_tokens)
            local = local_batch(plan, rank, batch)
            with sp.step(plan, local) as stats:
                results.append({**step_and_reduce(model, local, batch), "comm": stats.to_dict()})
        return results


def step_and_reduce(model, local, batch) -> dict:
    """This rank's forward and backward of its piece: its logits, the global loss, and every
    gradient summed over the ranks."""
    logits = model(local.tokens[None], local.cu_seqlens)
    loss_sum, _ = token_losses(logits, local.labels[None])
    (loss_sum / batch.n_targets).backward()
    grads = [p.grad for p in model.parameters()]
    for g in grads:
        dist.all_reduce(g)
    total = loss_sum.detach().clone()
    dist.all_reduce(total)
    return {"logits": logits.detach()[0], "loss": total / batch.n_targets, "grads": grads}


def reference(mixer: str, lengths: list[int]) -> dict:
    model = tiny_model(mixer)
    batch = make_batch(lengths)
    logits = model(batch.tokens[None], batch.cu_seqlens)
    loss_sum, _ = token_losses(logits, batch.labels[None])
    loss = loss_sum / batch.n_targets
    loss.backward()
    return {"logits": logits.detach()[0], "loss": loss.detach(), "grads": [p.grad for p in model.parameters()]}


def rel_grads(got: list[torch.Tensor], ref: list[torch.Tensor]) -> list[float]:
    """Each gradient's error relative to its norm, floored at 1e-3 of the largest: a gradient
    that nearly cancels over the tokens (the delta rule's dt_bias at init, ~1e-4 of the
    largest) carries fp32 rounding of the terms it sums, not of its small total."""
    floor = 1e-3 * max(g.norm() for g in ref)
    return [((g - g_ref).norm() / max(g_ref.norm(), floor)).item() for g, g_ref in zip(got, ref)]


def piece_of(full: torch.Tensor, plan: StepPlan, rank: int) -> torch.Tensor:
    return torch.cat([full[a:b] for a, b in plan.pieces[rank].spans])


def every_case(world: int) -> tuple[list[tuple], list[tuple]]:
    """Every scenario x mixer x relay on ``world`` ranks: the workers' cases, and their keys."""
    cases, keys = [], []
    for name, (lengths, plan) in scenarios(world).items():
        for mixer in MIXERS:
            for relay in RELAYS:
                cases.append((mixer, relay, lengths, plan.to_dict()))
                keys.append((name, mixer, relay, lengths, plan))
    return cases, keys


def assert_match_one_process(world: int, keys: list[tuple], per_rank: list[list[dict]]) -> None:
    """Each rank's logits, and the loss and every summed gradient, against one process."""
    refs = {}
    for i, (name, mixer, relay, lengths, plan) in enumerate(keys):
        ref = refs.setdefault((name, mixer), reference(mixer, lengths))
        for rank in range(world):
            got, what = per_rank[rank][i], f"{name}/{mixer}/{relay} rank {rank}"
            assert rel(got["logits"], piece_of(ref["logits"], plan, rank)) < TOLERANCE, what
            assert abs(got["loss"].item() - ref["loss"].item()) / ref["loss"].item() < TOLERANCE, what
            for p, error in enumerate(rel_grads(got["grads"], ref["grads"])):
                assert error < TOLERANCE, f"{what} parameter {p}"


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda w: f"{w}ranks")
def world_results(request):
    world = request.param
    cases, keys = every_case(world)
    return world, keys, run_local(world, sp_worker, cases)


def test_outputs_loss_and_gradients_match_single_process(world_results):
    assert_match_one_process(*world_results)


def test_relay_bytes_per_layer_are_the_summaries_whatever_the_length(world_results):
    """Rank 0 of one chain over every rank: the chain relay sends one [H, K, V] fp32 state per
    layer; the all-gather sends the summary (A, S) the planner prices to each other rank; the
    same in every scenario, whatever its length."""
    world, keys, per_rank = world_results
    for i, (name, mixer, relay, lengths, _) in enumerate(keys):
        if name not in ("spanning", "random", "conv_window"):
            continue
        sent = per_rank[0][i]["comm"]["sent"]["layer0.scan"]
        cfg = tiny_model(mixer).cfg
        H, K, V = scan_shape(cfg)
        if relay == "chain":
            assert sent == H * K * V * 4, (name, mixer)
        elif relay == "allgather":
            assert sent == summary_bytes(cfg) * (world - 1), (name, mixer, sum(lengths))


@pytest.mark.parametrize("mixer", ("gla", "ssd", "gdn-neg"))
def test_triton_relay_ops_match_single_process(mixer):
    """The scan, summary and in-place correction as Triton kernels (interpreted on CPU, or
    compiled on a GPU machine) against one process on the references. 1e-4: the kernels'
    own fp32 tolerance (summation order inside the kernels differs from the references)."""
    pytest.importorskip("triton")
    cases = [(mixer, "chain", *scenario) for scenario in (scenarios(2)["spanning"], scenarios(2)["random"])]
    as_dicts = [(m, r, lengths, plan.to_dict()) for m, r, lengths, plan in cases]
    per_rank = run_local(2, sp_worker, as_dicts, False, "triton")
    for i, (_, _, lengths, plan) in enumerate(cases):
        ref = reference(mixer, lengths)
        for rank in range(2):
            got = per_rank[rank][i]
            assert rel(got["logits"], piece_of(ref["logits"], plan, rank)) < 1e-4, rank
            for p, (g, g_ref) in enumerate(zip(got["grads"], ref["grads"])):
                assert rel(g, g_ref) < 1e-4, f"rank {rank} parameter {p}"


@pytest.mark.parametrize("world", (3, 4))
def test_pipelined_chain_and_unhidden_relays_match_single_process(world):
    """The chain in 3 blocks of the value dim (uneven: V = 16 or 32), and every strategy with
    overlap off, on the scenarios with cuts inside documents and resets inside chains."""
    cases, keys = [], []
    for name in ("spanning", "random", "two_chains"):
        lengths, plan = scenarios(world)[name]
        for mixer in ("gla", "ssd", "gdn-neg"):
            for relay, options in [("chain", {"blocks": 3})] + [(r, {"overlap": False}) for r in RELAYS]:
                cases.append((mixer, relay, lengths, plan.to_dict(), options))
                keys.append((name, mixer, relay, lengths, plan))
    assert_match_one_process(world, keys, run_local(world, sp_worker, cases))


def test_a_reset_shortens_the_chains_dependency():
    """One chain over 4 ranks: a document spanning all of them is 3 dependent hops; with a
    document starting inside rank 1's piece, rank 1 sends on without waiting and the longest
    dependency is 2 hops (counted by the relay itself, each message's count one past the
    one its sender received if it forwarded it); the plan's runs say the same, and the
    results stay exact."""
    spanning = [160]
    reset = [50, 110]  # document 1 starts at 50, inside rank 1's piece [40, 80)
    edges = [0, 40, 80, 120, 160]
    plan = StepPlan([RankPiece([(a, b)], [0, 1, 2, 3]) for a, b in zip(edges[:-1], edges[1:])])
    cases = [("gla", "chain", lengths, plan.to_dict(), {"trace_hops": True}) for lengths in (spanning, reset)]
    per_rank = run_local(4, sp_worker, cases)
    for i, lengths in enumerate((spanning, reset)):
        hops = max(per_rank[rank][i]["comm"]["hops"]["layer0.scan"] for rank in range(4))
        runs = plan.dependency_runs(make_batch(lengths).cu_seqlens.tolist())
        assert hops == max(len(run) - 1 for run in runs) == (3 if lengths == spanning else 2)
    keys = [(f"hops{len(lengths)}", "gla", "chain", lengths, plan) for lengths in (spanning, reset)]
    assert_match_one_process(4, keys, per_rank)


def test_skipped_correction_is_detected():
    """With the incoming-state correction disabled, continuing pieces are wrong: the
    exactness test above has teeth."""
    lengths, plan = scenarios(2)["spanning"]
    cases = [("gla", "chain", lengths, plan.to_dict())]
    per_rank = run_local(2, sp_worker, cases, True)
    ref = reference("gla", lengths)
    assert rel(per_rank[0][0]["logits"], piece_of(ref["logits"], plan, 0)) < TOLERANCE  # nothing flows in
    assert rel(per_rank[1][0]["logits"], piece_of(ref["logits"], plan, 1)) > 1e-3


LEAK_CUTS = ([0, 35, 70, 100], [0, 20, 70, 100])  # document 0 ends inside rank 0's piece, or at the cut


def leak_worker(rank: int, world: int, lengths: list[int], mixers: list[str]) -> list[list[torch.Tensor]]:
    """Per mixer and cuts: logits for two batches that differ only in document 0's tokens."""
    results = []
    for mixer in mixers:
        for edges in LEAK_CUTS:
            plan = StepPlan([RankPiece([(a, b)], [0, 1, 2]) for a, b in zip(edges[:-1], edges[1:])])
            out = []
            for seed_shift in (0, 1):
                model = tiny_model(mixer)
                sp = SequenceParallel(rank, world, "chain")
                apply_sequence_parallel(model, sp)
                batch = make_batch(lengths)
                if seed_shift:
                    batch.tokens[: lengths[0]] = (batch.tokens[: lengths[0]] + 1) % 257
                local = local_batch(plan, rank, batch)
                with sp.step(plan, local):
                    out.append(model(local.tokens[None], local.cu_seqlens).detach()[0])
            results.append(out)
    return results


def test_no_state_leaks_across_a_document_boundary():
    """Document 0 ends inside rank 0's piece (cut 1) or exactly at the cut (cut 2); changing
    it must leave every later token's logits bitwise unchanged, on every rank, every mixer
    (the Newton-trained ones too: their first guess's message and every iteration's relay)."""
    lengths, mixers = [20, 50, 30], [*MIXERS, "paragru", "paralstm"]
    per_rank = run_local(3, leak_worker, lengths, mixers)
    for i, (mixer, edges) in enumerate((m, e) for m in mixers for e in LEAK_CUTS):
        for rank in range(3):
            base, changed = per_rank[rank][i]
            start = max(0, 20 - edges[rank])
            assert torch.equal(base[start:], changed[start:]), f"{mixer}: rank {rank}, cuts {edges}"
        assert not torch.equal(per_rank[0][i][0][:20], per_rank[0][i][1][:20]), mixer


class _StampBackward(torch.autograd.Function):
    """Identity; records when its backward runs (just before the backward of what made x)."""

    @staticmethod
    def forward(ctx, x, times):
        ctx.times = times
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.times["scan_backward"] = time.time()
        return grad, None


def overlap_worker(rank: int, world: int, relay: str, overlap: bool, lengths: list[int], plan_dict: dict) -> dict:
    """One relayed scan, rank 0 late by a second: when each rank began its relay and its
    scan, and when its backward launched the gradient relay and began the scan's backward."""
    sp = SequenceParallel(rank, world, relay, overlap=overlap)
    plan = StepPlan.from_dict(plan_dict)
    local = local_batch(plan, rank, make_batch(lengths))
    gen = torch.Generator().manual_seed(rank)
    T = local.tokens.numel()
    q, k, v = (torch.randn(1, T, 2, 8, generator=gen, requires_grad=True) for _ in range(3))
    g = (-torch.rand(1, T, 2, 8, generator=gen)).requires_grad_()
    times = {}

    def timed_scan(*args, **kwargs):
        times["scan"] = time.time()
        o, state = chunk_gla(*args, **kwargs)
        return _StampBackward.apply(o, times), state

    launch_backward = relay_module._InFlight.start_backward

    def timed_launch(self, dS_in):
        times["relay_backward"] = time.time()
        launch_backward(self, dS_in)

    relay_module._InFlight.start_backward = timed_launch
    if rank == 0:
        time.sleep(1.0)
    times["relay"] = time.time()
    with sp.step(plan, local):
        o, _ = RelayedScan(timed_scan, sp, layer=0)(q, k, v, g, cu_seqlens=local.cu_seqlens, chunk_size=16)
        o.square().sum().backward()
    return times


@pytest.mark.parametrize("overlap", (True, False), ids=("overlap", "no_overlap"))
@pytest.mark.parametrize("relay", RELAYS)
def test_relay_is_in_flight_during_the_scan(relay, overlap):
    """Rank 1 scans its piece while its relay waits for the late rank 0, and each rank's
    gradient relay is launched before its scan's backward; with ``overlap=False`` the relay
    finishes before the scan, and the gradient relay is launched after the scan's backward."""
    lengths, plan = scenarios(2)["spanning"]
    rank0, rank1 = run_local(2, overlap_worker, relay, overlap, lengths, plan.to_dict())
    assert (rank1["scan"] < rank0["relay"]) == overlap, (rank0, rank1)
    for times in (rank0, rank1):
        assert (times["relay_backward"] < times["scan_backward"]) == overlap, times


def test_a_relaying_op_outside_a_step_is_refused():
    """A model made sequence-parallel and called outside ``with sp.step(...)`` would skip its
    relays; it is an error instead, and a step's plan does not outlive its block."""
    sp = SequenceParallel(0, 1, "chain")
    model = apply_sequence_parallel(tiny_model("ssd"), sp)
    plan = StepPlan([RankPiece([(0, 30)])])
    local = local_batch(plan, 0, make_batch([30]))
    with sp.step(plan, local) as stats:
        model(local.tokens[None], local.cu_seqlens)
    assert stats.sent == {}
    with pytest.raises(RuntimeError, match="outside `with SequenceParallel.step"):
        model(local.tokens[None], local.cu_seqlens)
