"""The blockwise attention reference against the whole score matrix, and partial results over
disjoint keys merging exactly. fp64: only summation order differs (1e-10)."""

import pytest
import torch

from baton.kernels.attention_ref import attention_ref, merge_partials, naive_attention, prefix_attention
from tests.helpers import assert_close


def inputs(T=37, H=4, Hk=2, D=8, Dv=6, P=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, H, D, generator=gen, dtype=torch.float64)
    k, v = torch.randn(1, T, Hk, D, generator=gen, dtype=torch.float64), torch.randn(1, T, Hk, Dv, generator=gen)
    prefix = (torch.randn(1, P, Hk, D, generator=gen, dtype=torch.float64), torch.randn(1, P, Hk, Dv, generator=gen))
    return q, k, v.double(), prefix[0], prefix[1].double()


@pytest.mark.parametrize("block", [1, 3, 16, 64])
@pytest.mark.parametrize("prefixed", [False, True])
def test_blockwise_equals_the_whole_matrix(block, prefixed):
    q, k, v, pk, pv = (t.requires_grad_() for t in inputs())
    cu = torch.tensor([0, 12, 13, 30, 37])  # a one-token document among them
    prefix = (pk, pv) if prefixed else (None, None)
    ours = attention_ref(q, k, v, cu, *prefix, block=block)
    theirs = naive_attention(q, k, v, cu, *prefix)
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in theirs]
    leaves = [q, k, v, pk, pv] if prefixed else [q, k, v]
    for name, a, b in zip(("o", "lse"), ours, theirs):
        assert_close(a, b, 1e-10, name)
    grads = [torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), leaves) for out in (ours, theirs)]
    for name, a, b in zip(("dq", "dk", "dv", "d prefix k", "d prefix v"), *grads):
        assert_close(a, b, 1e-10, name)


def test_partials_over_disjoint_keys_merge_exactly():
    """The first document's queries over the prefix alone, merged with the stream's own
    attention, are the attention over both; the other documents see no prefix."""
    q, k, v, pk, pv = inputs()
    cu = torch.tensor([0, 20, 37])
    whole = attention_ref(q, k, v, cu, pk, pv, block=8)
    own = attention_ref(q, k, v, cu, block=8)
    groups = q.shape[2] // k.shape[2]
    s = torch.einsum("bqhd,bkhd->bqhk", q, pk.repeat_interleave(groups, 2)) * q.shape[-1] ** -0.5
    s[:, 20:] = float("-inf")  # the second document does not continue the prefix
    lse_prefix = torch.logsumexp(s, -1)
    o_prefix = torch.einsum("bqhk,bkhd->bqhd", torch.softmax(s, -1).nan_to_num(), pv.repeat_interleave(groups, 2))
    merged = merge_partials(*own, o_prefix, lse_prefix)
    for name, a, b in zip(("o", "lse"), merged, whole):
        assert_close(a, b, 1e-10, name)
    assert_close(own[0][:, 20:], whole[0][:, 20:], 1e-12, "the second document")  # key blocks shift with the prefix


def test_blockwise_prefix_attention_merges_into_the_whole():
    """prefix_attention, blockwise (blocks of 8 over a 13-token prefix), merged with the first
    document's own attention: the whole attention's outputs and every gradient (fp64, 1e-10)."""
    q, k, v, pk, pv = inputs(P=13)
    cu = torch.tensor([0, 20, 37])
    leaves = [x.clone().requires_grad_() for x in (q, k, v, pk, pv)]
    own = attention_ref(*leaves[:3], cu, block=8)
    first = merge_partials(own[0][:, :20], own[1][:, :20], *prefix_attention(leaves[0][:, :20], *leaves[3:], block=8))
    ours = torch.cat([first[0], own[0][:, 20:]], dim=1)
    whole_leaves = [x.clone().requires_grad_() for x in (q, k, v, pk, pv)]
    whole = attention_ref(*whole_leaves[:3], cu, *whole_leaves[3:], block=8)[0]
    assert_close(ours, whole, 1e-10, "o")
    weights = torch.randn_like(whole)
    for name, a, b in zip(
        ("dq", "dk", "dv", "d prefix k", "d prefix v"),
        torch.autograd.grad((ours * weights).sum(), leaves),
        torch.autograd.grad((whole * weights).sum(), whole_leaves),
    ):
        assert_close(a, b, 1e-10, name)


def test_query_heads_must_group_the_key_heads():
    q, k, v, _, _ = inputs(H=3, Hk=2)
    with pytest.raises(ValueError, match="3 query heads are not a multiple of 2 key/value heads"):
        attention_ref(q, k, v)
