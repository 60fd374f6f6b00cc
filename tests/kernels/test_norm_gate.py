"""The fused RMSNorm with a SiLU output gate (Triton, under TRITON_INTERPRET=1 on CPU) against
its reference, values and gradients of x, the gate and the weight, in both orders.

The reference runs in fp64 on the same inputs, so the tolerance measures the kernel alone:
fp32 1e-5 relative (the kernel sums a row in another order than PyTorch; a wrong term in the
backward is O(1)). Shapes: a row count that is not a multiple of the rows per program and a
width that is not a power of two (masked columns), and the mixed dtypes of SSD's gated norm
(an fp32 input, a bf16 gate).
"""

import pytest
import torch

pytest.importorskip("triton")

from baton.kernels import norm_gate  # noqa: E402
from baton.kernels.norm_gate_ref import norm_gate_ref  # noqa: E402
from baton.kernels.norm_gate_triton import ROWS  # noqa: E402
from tests.helpers import DEVICE, rel  # noqa: E402

pytestmark = pytest.mark.interpret


def output_and_grads(fn, x, gate, weight, norm_first):
    leaves = [t.detach().clone().requires_grad_() for t in (x, gate, weight)]
    y = fn(*leaves, 1e-6, norm_first)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DEVICE)
    return [y.detach(), *torch.autograd.grad((y.double() * w).sum(), leaves)]


@pytest.mark.parametrize("norm_first", [True, False], ids=["norm-then-gate", "gate-then-norm"])
@pytest.mark.parametrize("gate_dtype", [torch.float32, torch.bfloat16])
def test_fused_norm_gate_matches_the_reference(triton_kernels, norm_first, gate_dtype):
    gen = torch.Generator().manual_seed(0)
    rows, width = 2 * ROWS + 5, 48
    x = (torch.randn(rows // 5, 5, width, generator=gen) * 3).to(DEVICE)
    gate = torch.randn(rows // 5, 5, width, generator=gen).to(DEVICE, gate_dtype)
    weight = (1 + 0.1 * torch.randn(width, generator=gen)).to(DEVICE)
    ours = output_and_grads(norm_gate, x, gate, weight, norm_first)
    ref = output_and_grads(norm_gate_ref, x.double(), gate.double(), weight.double(), norm_first)
    assert ours[0].dtype == torch.float32 and ours[2].dtype == gate_dtype
    tol = 1e-5 if gate_dtype == torch.float32 else 1e-2  # a bf16 gate's gradient is rounded to bf16
    for name, a, b in zip(["y", "dx", "d_gate", "d_weight"], ours, ref):
        assert rel(a, b) < (tol if name == "d_gate" else 1e-5), name
