"""The delta rule's Triton state walk (interpreted on CPU, compiled on a GPU machine) against
the PyTorch references: the walk alone, and the delta-rule ops that run on it. fp32 1e-4 and
bf16 1e-2, the other kernels' tolerances (the walk's products sum in another order)."""

import pytest
import torch

from baton.kernels import chunk_delta, delta_correction, delta_summary
from baton.kernels.delta_ref import chunk_delta_ref, delta_correction_ref, delta_summary_ref
from baton.kernels.layout import build_layout, chunk_state_recurrence
from tests.helpers import delta_inputs, rel

pytestmark = pytest.mark.interpret

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def grads_of(outputs, wrt, weights):
    loss = sum((o.float() * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, wrt, allow_unused=True)


@pytest.mark.parametrize("K,V,lengths", [(16, 24, [50, 0, 100, 7]), (128, 40, [200, 70]), (256, 16, [65])])
def test_walk_matches_the_chunk_recurrence(K, V, lengths):
    """Documents of several chunks, an empty one, a partial last chunk; K in one tile, in two
    and four row blocks; the states, the final states and the gradients of all three inputs."""
    from baton.kernels.delta_triton import matrix_state_walk

    torch.manual_seed(0)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    layout = build_layout(cu, 32, torch.device(DEVICE))
    M = (torch.randn(layout.n_chunks, 2, K, K, device=DEVICE) / K**0.5).requires_grad_()
    U = torch.randn(layout.n_chunks, 2, K, V, device=DEVICE, requires_grad=True)
    h0 = torch.randn(len(lengths), 2, K, V, device=DEVICE, requires_grad=True)
    expected, got = chunk_state_recurrence(M, U, layout, h0), matrix_state_walk(M, U, layout, h0)
    weights = [torch.randn_like(x) for x in expected]
    for a, b in zip(got, expected):
        assert rel(a, b) < 1e-4
    for a, b in zip(grads_of(got, [M, U, h0], weights), grads_of(expected, [M, U, h0], weights)):
        assert rel(a, b) < 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
def test_ops_on_the_walk_match_the_references(triton_kernels, dtype, tol):
    """The chunked op over packed documents with initial states, the relay's summary and
    correction: outputs and every input's gradient, each against its reference in fp32 on
    the same (rounded) inputs."""
    T = 150
    inputs = [x.detach().to(DEVICE, dtype) for x in delta_inputs(T, K=16, V=24, seed=3, dtype=torch.float32)]
    cu = torch.tensor([0, 40, 41, T], device=DEVICE)
    h0 = torch.randn(3, 2, 16, 24, device=DEVICE)
    state = torch.randn(2, 16, 24, device=DEVICE)
    cases = {
        "chunk": (chunk_delta, chunk_delta_ref, lambda q, k, v, g, b, s: (q, k, v, g, b, 0.25, s, cu, 32), h0),
        "summary": (delta_summary, delta_summary_ref, lambda q, k, v, g, b, s: (k, v, g, b, 61, 32), None),
        "correction": (
            delta_correction, delta_correction_ref,
            lambda q, k, v, g, b, s: (v.clone(), q, k, g, b, s, 97, 0.25, 32), state,
        ),
    }  # fmt: skip
    for name, (op, ref, args, extra) in cases.items():
        leaves = [x.clone().requires_grad_() for x in inputs]
        extra_leaf = [extra.clone().requires_grad_()] if extra is not None else [None]
        ref_leaves = [x.float().clone().requires_grad_() for x in inputs]
        ref_extra = [extra.clone().requires_grad_()] if extra is not None else [None]
        got, expected = op(*args(*leaves, *extra_leaf)), ref(*args(*ref_leaves, *ref_extra))
        got, expected = (x if isinstance(x, tuple) else (x,) for x in (got, expected))
        weights = [torch.randn_like(x.float()) for x in expected]
        for a, b in zip(got, expected):
            assert rel(a.float(), b.float()) < tol, name
        wrt = [x for x in [*leaves, *extra_leaf] if x is not None]
        ref_wrt = [x for x in [*ref_leaves, *ref_extra] if x is not None]
        for i, (a, b) in enumerate(zip(grads_of(got, wrt, weights), grads_of(expected, ref_wrt, weights))):
            assert (a is None) == (b is None), f"{name} d{i}"  # the inputs an op does not read
            if b is not None:
                assert rel(a.float(), b) < tol, f"{name} d{i}"
