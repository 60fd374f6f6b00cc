"""Attention across ranks on the recurrent layers' partition: every rank's outputs and the
gradients of its queries, keys and values equal one process attending over the whole stream
(fp64: the ranks add the same terms in another order, 1e-10), rotary positions continuing
across cuts, on 2, 3 and 4 real processes, documents cut anywhere (a long one across every
rank, random cuts, cuts on boundaries, two chains in one step); and keys and values cross a
cut only for documents that straddle it."""

from __future__ import annotations

import pytest
import torch

from baton.dist.local import run_local
from baton.models.attention import attend
from baton.models.rotary import Rotary
from baton.parallel.attention import RelayedAttention
from baton.parallel.plan import StepPlan, local_batch
from baton.parallel.sequence import SequenceParallel
from tests.helpers import assert_close, make_batch
from tests.parallel.test_sequence import scenarios

pytestmark = pytest.mark.ranks

H, HK, D = 4, 2, 8  # grouped-query: two query heads per key/value head
ROTARY = Rotary(4, theta=100.0)  # half the head dims; a small theta makes positions matter at these lengths


def stream(T: int) -> tuple[torch.Tensor, ...]:
    """The whole stream's queries, keys and values, and output weights, the same on every rank."""
    gen = torch.Generator().manual_seed(T)
    shapes = [(1, T, H, D), (1, T, HK, 2 * D), (1, T, H, D)]
    return tuple(torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes)


def local(x: torch.Tensor, spans: list) -> torch.Tensor:
    return torch.cat([x[:, a:b] for a, b in spans], dim=1)


def attention_worker(rank: int, world: int, cases: list[tuple]) -> list[dict]:
    results = []
    for lengths, plan_dict in cases:
        batch, plan = make_batch(lengths), StepPlan.from_dict(plan_dict)
        spans = plan.pieces[rank].spans
        q, kv, w = (local(x, spans) for x in stream(batch.n_tokens))
        q, kv = q.requires_grad_(), kv.requires_grad_()
        piece = local_batch(plan, rank, batch)
        sp = SequenceParallel(rank, world, "chain")
        with sp.step(plan, piece) as stats:
            o = RelayedAttention(sp, layer=0)(q, kv, piece.cu_seqlens, ROTARY, D**-0.5, block=8)
            (o * w).sum().backward()
        results.append({"o": o.detach(), "grads": [q.grad, kv.grad], "comm": stats.to_dict()})
    return results


@pytest.mark.parametrize("world", [2, 3, 4], ids=lambda w: f"{w}ranks")
def test_every_rank_matches_one_process(world):
    cases = [(lengths, plan.to_dict()) for lengths, plan in scenarios(world).values()]
    per_rank = run_local(world, attention_worker, cases)
    for i, (lengths, plan_dict) in enumerate(cases):
        batch, plan = make_batch(lengths), StepPlan.from_dict(plan_dict)
        q, kv, w = stream(batch.n_tokens)
        q, kv = q.requires_grad_(), kv.requires_grad_()
        o = attend(q, kv, batch.cu_seqlens, ROTARY, D**-0.5)
        (o * w).sum().backward()
        bounds = batch.cu_seqlens.tolist()
        for rank in range(world):
            got, spans, what = per_rank[rank][i], plan.pieces[rank].spans, f"case {i}, rank {rank}"
            assert_close(got["o"], local(o.detach(), spans), 1e-10, f"{what}: output")
            for name, g, ref in zip(("dq", "dkv"), got["grads"], (q.grad, kv.grad)):
                assert_close(g, local(ref, spans), 1e-10, f"{what}: {name}")
            # Keys and values cross a cut only for a document that continues there: a rank sends
            # its last segment once to each later rank that continues its document, and receives
            # the whole prefix (first_offset tokens); 2D per key head and token, 8 bytes each.
            piece = local_batch(plan, rank, batch)
            last = piece.cu_seqlens[-1] - piece.cu_seqlens[-2]
            per_token = HK * 2 * D * 8
            assert got["comm"]["sent"].get("layer0.kv", 0) == last * len(piece.kv_to) * per_token, what
            assert got["comm"]["received"].get("layer0.kv", 0) == piece.first_offset * per_token, what
            end = spans[-1][1]
            if end not in bounds and plan.neighbours(rank)[1] is not None:
                assert piece.kv_to, what
