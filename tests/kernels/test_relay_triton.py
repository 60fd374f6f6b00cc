"""The Triton summary and correction ops against the references, values and gradients.

Under TRITON_INTERPRET=1 on CPU (small shapes) or compiled on a GPU. The references run in
fp64, so the tolerances measure the kernels alone: fp32 inputs 1e-4 relative (exact fp32
products; only summation order differs), bf16 inputs 1e-2 (bf16 operands, fp32 accumulation).
"""

import pytest
import torch

pytest.importorskip("triton")

from baton.kernels import relay_triton  # noqa: E402
from baton.kernels.relay_ref import add_state_correction_ref, segment_summary_ref  # noqa: E402
from baton.kernels.relay_triton import add_state_correction_triton, segment_summary_triton  # noqa: E402
from tests.helpers import DEVICE, random_inputs, rel  # noqa: E402

pytestmark = pytest.mark.interpret


def leaves(tensors, dtype):
    return [x.detach().to(DEVICE, dtype).requires_grad_() for x in tensors]


def summary_and_grads(op, k, v, g, start):
    log_A, S = op(k, v, g, start)
    gen = torch.Generator().manual_seed(1)
    w_a, w_s = (torch.randn(x.shape, generator=gen, dtype=torch.float64).to(DEVICE) for x in (log_A, S))
    loss = (log_A.double() * w_a).sum() + (S.double() * w_s).sum()
    return [log_A.detach(), S.detach(), *torch.autograd.grad(loss, (k, v, g))]


def correction_and_grads(op, o, q, g, state, end, scale):
    out = op(o.clone(), q, g, state, end, scale)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(DEVICE)
    return [out.detach(), *torch.autograd.grad((out.double() * w).sum(), (o, q, g, state))]


def check(ours, theirs, names, tol):
    for name, a, b in zip(names, ours, theirs):
        assert torch.isfinite(a).all(), name
        err = rel(a.double().cpu(), b.double().cpu())
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol}"


CASES = [  # (T, start/end, head dim, log-gate scale)
    (45, 7, 16, 1.0),  # segment not a multiple of the 32-token block
    (70, 70, 32, 1.0),  # two full blocks and a partial one
    (40, 3, 128, 1.0),  # K = V = 128: two key and value blocks; a 3-token segment
    (80, 20, 16, 60.0),  # strong decay: cumulative gates in the thousands
]


@pytest.mark.parametrize("gate", ["gla", "ssd"])
@pytest.mark.parametrize("T,cut,dim,decay", CASES)
def test_segment_summary(gate, T, cut, dim, decay):
    _, k, v, g = random_inputs(gate, T, K=dim, V=dim, decay=decay, seed=T)
    start = T - cut
    ours = summary_and_grads(segment_summary_triton, *leaves((k, v, g), torch.float32), start)
    theirs = summary_and_grads(segment_summary_ref, *leaves((k, v, g), torch.float64), start)
    check(ours, theirs, ["log_A", "S", "dk", "dv", "dg"], 1e-4)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
@pytest.mark.parametrize("T,end,dim,decay", CASES)
def test_state_correction(gate, T, end, dim, decay):
    q, _, v, g = random_inputs(gate, T, K=dim, V=dim, decay=decay, seed=T + 1)
    state = torch.randn(2, dim, dim, dtype=torch.float64)
    ours = correction_and_grads(add_state_correction_triton, *leaves((v, q, g, state), torch.float32), end, 0.3)
    theirs = correction_and_grads(add_state_correction_ref, *leaves((v, q, g, state), torch.float64), end, 0.3)
    check(ours, theirs, ["o", "do", "dq", "dg", "dstate"], 1e-4)


def check_both_ops_fp32(gate, T, start, end, dim_k, dim_v, decay, seed):
    """Summary of tokens ``start:`` and correction of tokens ``:end``, against fp64 references."""
    q, k, v, g = random_inputs(gate, T, K=dim_k, V=dim_v, decay=decay, seed=seed)
    ours = summary_and_grads(segment_summary_triton, *leaves((k, v, g), torch.float32), start)
    theirs = summary_and_grads(segment_summary_ref, *leaves((k, v, g), torch.float64), start)
    check(ours, theirs, ["log_A", "S", "dk", "dv", "dg"], 1e-4)
    state = torch.randn(2, dim_k, dim_v, dtype=torch.float64)
    ours = correction_and_grads(add_state_correction_triton, *leaves((v, q, g, state), torch.float32), end, 0.3)
    theirs = correction_and_grads(add_state_correction_ref, *leaves((v, q, g, state), torch.float64), end, 0.3)
    check(ours, theirs, ["o", "do", "dq", "dg", "dstate"], 1e-4)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
def test_tiles_the_tuner_may_pick(gate, monkeypatch):
    # On a GPU the autotuner may give the summary and the correction's state gradient other
    # key and value tiles than the untuned ones; K = V = 64 splits into several of each.
    monkeypatch.setattr(relay_triton, "head_tiles", lambda K, V: {"BK": 16, "BV": 32})
    check_both_ops_fp32(gate, 45, 5, 40, 64, 64, decay=1.0, seed=4)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
@pytest.mark.parametrize("decay", [0.02, 30.0])
def test_long_segment_split_across_programs(gate, decay, monkeypatch):
    # A long segment (up to a rank's whole piece) is split across programs: their parts of the
    # states are summed, and the gate gradients' prefix and suffix sums continue across splits.
    # 64-token splits over 150 tokens: three, the last one partial. Weak decay, so that every
    # split reaches the others; strong decay for the precision.
    monkeypatch.setattr(relay_triton, "SPLIT_TOKENS", 64)
    check_both_ops_fp32(gate, 150, 2, 140, 16, 32, decay=decay, seed=6)


@pytest.mark.parametrize("gate", ["gla", "ssd"])
def test_bf16_inputs(gate):
    q, k, v, g = random_inputs(gate, 70, K=32, V=32, seed=3)
    ours = summary_and_grads(segment_summary_triton, *leaves((k, v, g), torch.bfloat16), 10)
    theirs = summary_and_grads(segment_summary_ref, *leaves((k, v, g), torch.float64), 10)
    assert ours[1].dtype == torch.float32 and ours[2].dtype == torch.bfloat16
    check(ours, theirs, ["log_A", "S", "dk", "dv", "dg"], 1e-2)
    state = torch.randn(2, 32, 32)
    bf16 = leaves((v, q, g), torch.bfloat16) + leaves((state,), torch.float32)
    ours = correction_and_grads(add_state_correction_triton, *bf16, 50, 0.2)
    theirs = correction_and_grads(add_state_correction_ref, *leaves((v, q, g, state), torch.float64), 50, 0.2)
    check(ours, theirs, ["o", "do", "dq", "dg", "dstate"], 1e-2)


def test_correction_adds_in_place_and_only_to_the_first_segment():
    q, _, v, g = (x.detach().float() for x in random_inputs("gla", 50, seed=8))
    o, before = v.clone(), v.clone()
    out = add_state_correction_triton(o, q, g, torch.randn(2, 8, 6), 20, 0.5)
    assert out.data_ptr() == o.data_ptr()
    assert torch.equal(o[:, 20:], before[:, 20:]) and not torch.equal(o[:, :20], before[:, :20])


@pytest.mark.parametrize("T", [64, 50])
def test_correction_in_place_on_the_scans_output(T):
    # T = 64: the scan's output is a view of its chunked result (no padding), T = 50: a
    # gathered copy. Either way the in-place add must keep every gradient right.
    from baton.kernels import chunk_gla_ref
    from baton.kernels.ops import chunk_scan_triton

    q, k, v, g = random_inputs("gla", T, K=16, V=16, seed=1)
    state = torch.randn(2, 16, 16, dtype=torch.float64)
    results = []
    for scan, correct, dtype in (
        (chunk_scan_triton, add_state_correction_triton, torch.float32),
        (chunk_gla_ref, add_state_correction_ref, torch.float64),
    ):
        inputs = leaves((q, k, v, g, state), dtype)
        o, _ = scan(*inputs[:4], chunk_size=16)
        out = correct(o, inputs[0], inputs[3], inputs[4], 30, 0.25)
        weights = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out).to(DEVICE)
        results.append([out.detach(), *torch.autograd.grad((out.double() * weights).sum(), inputs)])
    check(*results, ["o", "dq", "dk", "dv", "dg", "dstate"], 1e-4)
