"""The Triton scans against the PyTorch references, outputs and every gradient.

On a machine without a GPU they run under TRITON_INTERPRET=1 (small shapes keep this fast);
on a GPU the same tests run the compiled kernels. Tolerances are the issue's: fp32 inputs
1e-4 relative (the kernels use exact fp32 products, so the gap is summation order), bf16
and fp16 inputs 1e-2 (half-precision operands on the tensor cores, fp32 accumulation).
"""

import pytest
import torch

pytest.importorskip("triton")

from baton.kernels import chunk_gla_ref, chunk_ssd_ref, gla_triton, naive_recurrence, tuning  # noqa: E402
from baton.kernels.ops import chunk_scan_triton  # noqa: E402
from tests.helpers import DEVICE, random_cu_seqlens, random_inputs, rel  # noqa: E402

pytestmark = pytest.mark.interpret

REFS = {"gla": chunk_gla_ref, "ssd": chunk_ssd_ref}


def outputs_and_grads(scan, inputs, h0, **kwargs):
    """o, final state, and the gradients of a random projection of both w.r.t. every input."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs] + (
        [h0.detach().clone().requires_grad_()] if h0 is not None else []
    )
    o, s = scan(*leaves[:4], initial_state=leaves[4] if h0 is not None else None, **kwargs)
    gen = torch.Generator().manual_seed(7)
    w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)
    w_s = torch.randn(s.shape, generator=gen, dtype=torch.float64).to(o.device)
    loss = (o.double() * w_o).sum() + (s.double() * w_s).sum()
    return [o.detach(), s.detach(), *torch.autograd.grad(loss, leaves)]


def assert_close(gate, inputs, h0, tol, ref_dtype=None, **kwargs):
    ours = outputs_and_grads(chunk_scan_triton, inputs, h0, **kwargs)
    ref_inputs = [x.to(ref_dtype or x.dtype) for x in inputs]
    ref_h0 = h0.to(ref_dtype or h0.dtype) if h0 is not None else None
    theirs = outputs_and_grads(REFS[gate], ref_inputs, ref_h0, **kwargs)
    for name, a, b in zip(["o", "final", "dq", "dk", "dv", "dg", "dh0"], ours, theirs):
        err = rel(a.double(), b.double())
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol}"


def inputs_on_device(gate, T, dtype=torch.float32, **kwargs):
    return [x.detach().to(DEVICE, dtype) for x in random_inputs(gate, T, dtype=torch.float64, **kwargs)]


@pytest.mark.parametrize("gate", ["gla", "ssd"])
@pytest.mark.parametrize("T,chunk", [(45, 16), (70, 32), (64, 64), (140, 128)])
def test_batch_with_states_fp32(gate, T, chunk):
    inputs = inputs_on_device(gate, T, B=2, K=16, V=32, seed=T)
    h0 = torch.randn(2, 2, 16, 32).to(DEVICE)
    assert_close(gate, inputs, h0, 1e-4, chunk_size=chunk)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
def test_packed_documents_fp32(gate):
    T = 150
    inputs = inputs_on_device(gate, T, K=16, V=16, seed=11)
    cu = random_cu_seqlens(T, 5, seed=3)
    h0 = torch.randn(5, 2, 16, 16).to(DEVICE)
    assert_close(gate, inputs, h0, 1e-4, cu_seqlens=cu, chunk_size=32)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_head_dims(gate, head_dim):
    # K = 128 spans two key blocks of the state passes and four of the intra-chunk kernels.
    inputs = inputs_on_device(gate, 40, H=1, K=head_dim, V=head_dim, seed=head_dim)
    assert_close(gate, inputs, None, 1e-4, chunk_size=32)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
@pytest.mark.parametrize("intra_key_tile,head_tiles", [(16, {"BK": 32, "BV": 16}), (64, {"BK": 16, "BV": 32})])
def test_tiles_the_tuner_may_pick(gate, intra_key_tile, head_tiles, monkeypatch):
    # On a GPU the autotuner may give the kernels other tiles than the untuned ones these
    # tests run with; K = V = 64 splits into several of each.
    monkeypatch.setattr(gla_triton, "intra_key_tile", lambda K, scalar: intra_key_tile)
    monkeypatch.setattr(gla_triton, "head_tiles", lambda K, V: head_tiles)
    inputs = inputs_on_device(gate, 40, H=1, K=64, V=64, seed=3)
    assert_close(gate, inputs, torch.randn(1, 1, 64, 64).to(DEVICE), 1e-4, chunk_size=32)


def test_tuning_candidates_are_capped_at_the_head_dims(monkeypatch):
    # What Triton's autotuner would time on a GPU: tile sizes capped at the head dim they tile
    # (16 at least), each distinct setting once.
    monkeypatch.setattr(tuning, "AUTOTUNE", True)
    tuner = tuning.tuned("K", "V", **tuning.STATE_TUNING)(gla_triton._state_forward_kernel)
    tuner.nargs = {}

    def settings(K, V):
        configs = tuner.prune_configs({"K": K, "V": V})
        return [(c.kwargs["BK"], c.kwargs["BV"], c.num_warps, c.num_stages) for c in configs]

    launch = len(tuning.LARGE_TILE_WARPS) * len(tuning.STATE_TUNING["stages"])
    wide, narrow = settings(128, 128), settings(16, 48)
    assert {s[:2] for s in wide} == {(32, 32), (32, 64), (64, 32), (64, 64)}
    assert {s[:2] for s in narrow} == {(16, 32), (16, 64)}
    assert len(wide) == len(set(wide)) == 4 * launch and len(narrow) == len(set(narrow)) == 2 * launch


@pytest.mark.parametrize("gate", ["gla", "ssd"])
def test_strong_decay(gate):
    # Log gates down to -60 per token: cumulative gates reach thousands within a chunk, so any
    # factorisation through exp(-cumsum) would overflow. Compared in fp64 against the
    # reference: the gate gradient sums terms that cancel, which fp32 cannot resolve below 1e-4
    # relative when the reference itself runs in fp32.
    inputs = inputs_on_device(gate, 80, K=16, V=16, decay=60.0, seed=5)
    ours = outputs_and_grads(chunk_scan_triton, inputs, None, chunk_size=32)
    assert all(torch.isfinite(x).all() for x in ours)
    assert_close(gate, inputs, None, 1e-4, ref_dtype=torch.float64, chunk_size=32)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(gate, dtype):
    inputs = inputs_on_device(gate, 70, dtype=dtype, K=32, V=32, seed=9)
    h0 = torch.randn(1, 2, 32, 32).to(DEVICE)
    o, s = chunk_scan_triton(*inputs, initial_state=h0, chunk_size=32)
    assert o.dtype == dtype and s.dtype == torch.float32
    assert_close(gate, inputs, h0, 1e-2, ref_dtype=torch.float64, chunk_size=32)


def test_matches_token_recurrence_across_documents():
    # Independent of the chunked reference: the token-by-token recurrence, packed documents.
    inputs = inputs_on_device("gla", 60, K=16, V=16, seed=2)
    cu = torch.tensor([0, 7, 40, 60])
    o, s = chunk_scan_triton(*inputs, cu_seqlens=cu, chunk_size=16)
    o_ref, s_ref = naive_recurrence(*[x.double().cpu() for x in inputs], cu_seqlens=cu)
    assert rel(o.double().cpu(), o_ref) < 1e-5 and rel(s.double().cpu(), s_ref) < 1e-5


def test_rejects_unsupported_chunk_size():
    with pytest.raises(ValueError, match=r"chunk_size in \(16, 32, 64, 128\), got 48"):
        chunk_scan_triton(*inputs_on_device("gla", 20), chunk_size=48)
