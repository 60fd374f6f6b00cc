"""baton's RMSNorm: nn.RMSNorm's values and gradients, keeping only its input and a statistic."""

import torch
from torch import nn

from baton.models.norm import RMSNorm
from baton.profile.activations import ActivationMeter


def test_matches_torch_rmsnorm_values_and_gradients():
    torch.manual_seed(0)
    ours, theirs = RMSNorm(48, eps=1e-6).double(), nn.RMSNorm(48, eps=1e-6).double()
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 20, 48, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 20, 48, dtype=torch.float64)
    results = []
    for norm in (ours, theirs):
        y = norm(x)
        results.append((y, *torch.autograd.grad((y * w).sum(), [x, norm.weight])))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x_: ours(x_), (x[:1, :4],))


def test_keeps_its_input_and_one_fp32_number_per_row():
    norm = RMSNorm(64)
    x = torch.randn(100, 64, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), ActivationMeter() as meter:
        y = norm(x)
    assert y.dtype == torch.bfloat16  # the input's dtype, under autocast too
    assert meter.alive_bytes(exclude=[x, y, norm.weight]) == 100 * 4
