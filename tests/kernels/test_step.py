"""The decoding step: Triton (interpreted on CPU) against its reference, and both against the
token-by-token recurrence the chunked scans are tested against."""

import pytest
import torch

from baton.kernels import naive_recurrence
from baton.kernels.step_ref import recurrent_step_ref

pytest.importorskip("triton")

from baton.kernels.step_triton import recurrent_step_triton  # noqa: E402

pytestmark = pytest.mark.interpret

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(gate: str, dtype=torch.float32, B=3, H=2, K=20, V=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, K, generator=gen) for _ in range(2))
    v = torch.randn(B, H, V, generator=gen)
    g = -torch.rand(B, H, generator=gen) if gate == "ssd" else -torch.rand(B, H, K, generator=gen)
    state = torch.randn(B, H, K, V, generator=gen)
    return [x.to(DEVICE, dtype) for x in (q, k, v, g)] + [state.to(DEVICE)]


@pytest.mark.parametrize("gate", ["gla", "ssd"])
def test_reference_is_one_token_of_the_recurrence(gate):
    q, k, v, g, state = (x.double() for x in inputs(gate))
    o, new = recurrent_step_ref(q, k, v, g, state, 0.3)
    o_ref, s_ref = naive_recurrence(q[:, None], k[:, None], v[:, None], g[:, None], 0.3, initial_state=state)
    assert torch.allclose(o, o_ref[:, 0], rtol=1e-12) and torch.allclose(new, s_ref, rtol=1e-12)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_triton_matches_reference(gate, dtype, tol):
    """fp32: summation order only; bf16 inputs (states fp32): 1e-2, as the scans."""
    args = inputs(gate, dtype, K=40, V=96)  # more than one key and value tile
    o, new = recurrent_step_triton(*args, 0.3)
    o_ref, new_ref = recurrent_step_ref(*[a.double() for a in args], 0.3)
    assert o.dtype == dtype and new.dtype == torch.float32
    assert ((o.double() - o_ref).norm() / o_ref.norm()).item() < tol
    assert ((new.double() - new_ref).norm() / new_ref.norm()).item() < tol
