"""The chunked delta rule (WY/UT form) and its relay ops against the token-by-token recurrence.

fp64 comparisons isolate the algorithm (1e-10: only summation order differs); keys are unit
norm as the mixer makes them, and β spans [0, 2] (negative eigenvalues) unless stated.
"""

import pytest
import torch

from baton.kernels import chunk_delta_ref, naive_delta_recurrence
from baton.kernels.delta_ref import delta_correction_ref, delta_step_ref, delta_summary_ref
from baton.kernels.layout import apply_transition
from tests.helpers import delta_inputs, random_cu_seqlens, rel


def compare(inputs, atol, chunk_size, **kwargs):
    o, s = chunk_delta_ref(*inputs, chunk_size=chunk_size, **kwargs)
    o_ref, s_ref = naive_delta_recurrence(*inputs, **kwargs)
    assert rel(o, o_ref) < atol and rel(s, s_ref) < atol
    extra = [kwargs["initial_state"]] if "initial_state" in kwargs else []
    wrt = [*inputs, *extra]
    grads = torch.autograd.grad((o * o_ref.detach()).sum() + (s * s_ref.detach()).sum(), wrt)
    grads_ref = torch.autograd.grad((o_ref * o_ref.detach()).sum() + (s_ref * s_ref.detach()).sum(), wrt)
    for name, g, g_ref in zip(["q", "k", "v", "g", "beta", "h0"], grads, grads_ref):
        assert rel(g, g_ref) < atol, f"d{name}"


@pytest.mark.parametrize("beta_max", [1.0, 2.0])
@pytest.mark.parametrize("T,chunk", [(37, 16), (100, 32), (64, 64), (5, 16)])
def test_batched_with_initial_state(T, chunk, beta_max):
    inputs = delta_inputs(T, B=2, beta_max=beta_max, seed=T)
    h0 = torch.randn(2, 2, 8, 6, dtype=torch.float64, requires_grad=True)
    compare(inputs, 1e-10, chunk, initial_state=h0)


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_documents_with_initial_states(seed):
    T = 181
    inputs = delta_inputs(T, seed=seed)
    h0 = torch.randn(6, 2, 8, 6, dtype=torch.float64, requires_grad=True)
    compare(inputs, 1e-10, 32, initial_state=h0, cu_seqlens=random_cu_seqlens(T, 6, seed))


def test_fp32_long_sequence():
    """The precision the trainer runs at: 1e-5 relative, the other scans' fp32 bound."""
    inputs = delta_inputs(400, H=1, K=16, V=8, dtype=torch.float32, decay=0.05, seed=4)
    o, s = chunk_delta_ref(*inputs, chunk_size=64)
    o_ref, s_ref = naive_delta_recurrence(*[x.detach().double() for x in inputs])
    assert rel(o.double(), o_ref) < 1e-5 and rel(s.double(), s_ref) < 1e-5


def test_summary_composes_a_segment_and_correction_adds_the_incoming_state():
    """What the relay uses: (M, S) of tokens ``start:`` continue any state entering there
    (``M S_in + S``, the recurrence's state at the end), and the outputs of a piece scanned
    from zero plus the correction equal the recurrence entered by ``S_in``; with gradients."""
    T, start, end = 90, 23, 61
    q, k, v, g, beta = delta_inputs(T, seed=7)
    S_in = torch.randn(2, 8, 6, dtype=torch.float64, requires_grad=True)
    M, S = delta_summary_ref(k, v, g, beta, start, 16)
    tail = [x[:, start:] for x in (q, k, v, g, beta)]
    _, S_ref = naive_delta_recurrence(*tail, initial_state=S_in[None])
    assert_same_with_grads(apply_transition(M, S_in) + S, S_ref[0], [k, v, g, beta, S_in])

    cu = torch.tensor([0, end, T])
    o0, _ = chunk_delta_ref(q, k, v, g, beta, 0.3, None, cu, 16)
    o = delta_correction_ref(o0, q, k, g, beta, S_in, end, 0.3, 16)
    h0 = torch.cat([S_in[None], torch.zeros_like(S_in)[None]])
    o_ref, _ = naive_delta_recurrence(q, k, v, g, beta, 0.3, h0, cu)
    assert_same_with_grads(o, o_ref, [q, k, v, g, beta, S_in])


def assert_same_with_grads(x, x_ref, wrt):
    assert rel(x, x_ref) < 1e-10
    weights = torch.randn_like(x_ref)
    grads = torch.autograd.grad((x * weights).sum(), wrt)
    grads_ref = torch.autograd.grad((x_ref * weights).sum(), wrt)
    for i, (d, d_ref) in enumerate(zip(grads, grads_ref)):
        assert rel(d, d_ref) < 1e-10, i


def test_empty_correction_keeps_the_state_in_the_graph():
    q, k, v, g, beta = delta_inputs(20, seed=2)
    S_in = torch.randn(2, 8, 6, dtype=torch.float64, requires_grad=True)
    o0, _ = chunk_delta_ref(q, k, v, g, beta, 0.3, None, None, 16)
    o = delta_correction_ref(o0, q, k, g, beta, S_in, 0, 0.3, 16)
    assert torch.equal(o, o0)
    (grad,) = torch.autograd.grad(o.sum(), [S_in])
    assert torch.equal(grad, torch.zeros_like(S_in))


def test_step_continues_the_chunked_scan():
    """Decoding: the state after a prefix through the chunked scan, then one token at a time,
    gives the recurrence's outputs."""
    T, prefix = 30, 17
    q, k, v, g, beta = (x.detach() for x in delta_inputs(T, B=2, seed=5))
    o_ref, _ = naive_delta_recurrence(q, k, v, g, beta, 0.5)
    _, S = chunk_delta_ref(*(x[:, :prefix] for x in (q, k, v, g, beta)), 0.5, None, None, 16)
    for t in range(prefix, T):
        o, S = delta_step_ref(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], S, 0.5)
        assert rel(o, o_ref[:, t]) < 1e-10
