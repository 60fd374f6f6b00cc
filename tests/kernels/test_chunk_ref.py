"""The chunked reference scans against the token-by-token recurrence.

fp64 comparisons isolate the algorithm (tolerance 1e-10: only summation order differs);
the fp32 case checks the precision the trainer runs at (1e-5 relative).
"""

import pytest
import torch

from baton.kernels import chunk_gla_ref, chunk_ssd_ref, naive_recurrence
from tests.helpers import random_cu_seqlens, random_inputs, rel

SCANS = {"gla": chunk_gla_ref, "ssd": chunk_ssd_ref}


def compare(scan, inputs, atol, chunk_size, **kwargs):
    o, s = scan(*inputs, chunk_size=chunk_size, **kwargs)
    o_ref, s_ref = naive_recurrence(*inputs, **kwargs)
    assert rel(o, o_ref) < atol and rel(s, s_ref) < atol
    grads = torch.autograd.grad((o * o_ref.detach()).sum() + (s * s_ref.detach()).sum(), inputs)
    grads_ref = torch.autograd.grad((o_ref * o_ref.detach()).sum() + (s_ref * s_ref.detach()).sum(), inputs)
    for name, g, g_ref in zip("qkvg", grads, grads_ref):
        assert rel(g, g_ref) < atol, f"d{name}"


@pytest.mark.parametrize("gate", ["gla", "ssd"])
@pytest.mark.parametrize("T,chunk", [(37, 16), (100, 32), (64, 64), (5, 16)])
def test_batched_with_initial_state(gate, T, chunk):
    inputs = random_inputs(gate, T, B=2, seed=T)
    h0 = torch.randn(2, 2, 8, 6, dtype=torch.float64, requires_grad=True)
    compare(SCANS[gate], inputs, 1e-10, chunk, initial_state=h0)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packed_documents(gate, seed):
    T = 181
    inputs = [x.detach()[:1].requires_grad_() for x in random_inputs(gate, T, seed=seed)]
    cu = random_cu_seqlens(T, 6, seed)
    h0 = torch.randn(6, 2, 8, 6, dtype=torch.float64, requires_grad=True)
    compare(SCANS[gate], inputs, 1e-10, 32, initial_state=h0, cu_seqlens=cu)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
def test_strong_decay_is_finite_and_exact(gate):
    # log-gates down to -60 per token: a chunk's cumulative gate reaches about -2000, far
    # past exp's fp32 range, so any exp(-cumsum) factorisation would overflow.
    inputs = random_inputs(gate, 150, decay=60.0, dtype=torch.float32, seed=3)
    o, s = SCANS[gate](*inputs, chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    o_ref, s_ref = naive_recurrence(*[x.detach().double() for x in inputs])
    assert rel(o.double(), o_ref) < 1e-5 and rel(s.double(), s_ref) < 1e-5
    # Gradients: exact in fp64. (In fp32 the gate gradient is a reverse cumulative sum of
    # terms that cancel, so it carries ~1e-6 absolute noise, as in flash-linear-attention.)
    compare(SCANS[gate], [x.detach().double().requires_grad_() for x in inputs], 1e-10, 64)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
def test_fp32_long_sequence(gate):
    inputs = random_inputs(gate, 700, H=1, dtype=torch.float32, decay=0.05, seed=4)
    compare(SCANS[gate], inputs, 1e-5, 64)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
def test_bf16_inputs_fp32_state(gate):
    inputs = [x.detach().to(torch.bfloat16) for x in random_inputs(gate, 90, dtype=torch.float32, seed=5)]
    o, s = SCANS[gate](*inputs, chunk_size=32)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    o_ref, s_ref = naive_recurrence(*[x.double() for x in inputs])
    assert rel(o.double(), o_ref) < 1e-2 and rel(s.double(), s_ref) < 1e-4


@pytest.mark.parametrize("gate", ["gla", "ssd"])
def test_documents_do_not_leak(gate):
    q, k, v, g = (x.detach() for x in random_inputs(gate, 120, seed=6))
    cu = torch.tensor([0, 50, 120])
    o, _ = SCANS[gate](q, k, v, g, cu_seqlens=cu, chunk_size=32)
    k2, v2 = k.clone(), v.clone()
    k2[:, :50] += 1.0
    v2[:, :50] -= 2.0
    o2, _ = SCANS[gate](q, k2, v2, g, cu_seqlens=cu, chunk_size=32)
    assert torch.equal(o[:, 50:], o2[:, 50:])
    assert not torch.allclose(o[:, :50], o2[:, :50])


def test_rejects_inconsistent_cu_seqlens():
    q, k, v, g = (x.detach() for x in random_inputs("gla", 20))
    with pytest.raises(ValueError, match="ends at 15"):
        chunk_gla_ref(q, k, v, g, cu_seqlens=torch.tensor([0, 15]))
