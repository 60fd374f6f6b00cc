"""FlexAttention, the attention ops' GPU path, against the blockwise reference: on CPU its
(unfused) forward, the only part that runs there: the document mask, the prefix, grouped-query
heads and the log-sum-exp convention; on a GPU, forward and backward (skipped without one:
``bash bench/gpu_check.sh hybrid`` runs them when a GPU is lent). fp32: 1e-5 relative, the two
sum the same products in other orders (~1e-7)."""

from __future__ import annotations

import warnings

import pytest
import torch

from baton.kernels import kernel_backend
from baton.kernels.attention_flex import attention_flex, prefix_attention_flex
from baton.kernels.attention_ref import attention_ref, prefix_attention
from baton.kernels.registry import OPS
from tests.helpers import assert_close

CASES = {  # cu_seqlens, prefix length: several documents and one continuing a prefix, or one document
    "documents+prefix": ([0, 130, 200, 300], 37),
    "documents": ([0, 130, 200, 300], 0),
    "one document": (None, 0),
}


def inputs(T=300, H=4, Hk=2, D=32, P=37, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(1, T, H, D), (1, T, Hk, D), (1, T, Hk, D), (1, P, Hk, D), (1, P, Hk, D)]
    return [torch.randn(s, generator=gen).to(device) for s in shapes]


@pytest.fixture(autouse=True)
def quiet():  # FlexAttention warns that it runs unfused without torch.compile (CPU)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        yield


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_the_reference(case):
    bounds, P = CASES[case]
    q, k, v, pk, pv = inputs(P=max(P, 1))
    cu = None if bounds is None else torch.tensor(bounds)
    prefix = (pk, pv) if P else (None, None)
    for name, a, b in zip(
        ("o", "lse"), attention_flex(q, k, v, cu, *prefix, block=128), attention_ref(q, k, v, cu, *prefix)
    ):
        assert_close(a, b, 1e-5, f"{case}: {name}")
    for name, a, b in zip(("o", "lse"), prefix_attention_flex(q, pk, pv), prefix_attention(q, pk, pv, block=64)):
        assert_close(a, b, 1e-5, f"prefix attention: {name}")


def test_the_cpu_path_is_the_reference_whatever_the_backend():
    """On CPU the CUDA-only kernel is not called, even under a forced ``triton`` backend."""
    q, k, v, pk, pv = inputs()
    with kernel_backend("triton"):
        ours = OPS["attention"](q, k, v, torch.tensor([0, 130, 300]), pk, pv)
    theirs = attention_ref(q, k, v, torch.tensor([0, 130, 300]), pk, pv)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward runs on a GPU only")
@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_on_a_gpu(case):
    bounds, P = CASES[case]
    leaves = [x.requires_grad_() for x in inputs(P=max(P, 1), device="cuda")]
    cu = None if bounds is None else torch.tensor(bounds, device="cuda")
    weights = torch.randn(1, 300, 4, 32, device="cuda")
    results = []
    for fn in (attention_flex, attention_ref):
        prefix = leaves[3:] if P else (None, None)
        o, lse = fn(*leaves[:3], cu, *prefix)
        grads = torch.autograd.grad((o * weights).sum() + lse.sum(), leaves, allow_unused=True)
        results.append([o, lse, *(g for g in grads if g is not None)])
    for i, (a, b) in enumerate(zip(*results)):
        assert_close(a, b, 1e-5, f"{case}: tensor {i}")
