"""The document-aware causal conv against a per-document torch conv1d."""

import torch
import torch.nn.functional as F

from baton.kernels import causal_conv1d


def conv_per_document(x, weight, bias, cu):
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        seg = F.pad(x[:, a:b].transpose(1, 2), (weight.shape[1] - 1, 0))
        outs.append(F.conv1d(seg, weight[:, None], bias, groups=x.shape[2]).transpose(1, 2))
    return torch.cat(outs, dim=1)


def test_matches_conv1d_per_document():
    torch.manual_seed(0)
    x, w, b = torch.randn(1, 50, 6, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), torch.randn(6)
    cu = torch.tensor([0, 2, 19, 20, 50])
    assert torch.allclose(causal_conv1d(x, w, b.double(), cu), conv_per_document(x, w, b.double(), cu))


def test_left_context_continues_first_document():
    torch.manual_seed(1)
    x, w = torch.randn(1, 30, 5, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    cu = torch.tensor([0, 12, 30])
    full = causal_conv1d(x, w, None, cu)
    # Split inside the first document: the second half sees the first through a halo of 3.
    tail = causal_conv1d(x[:, 7:], w, None, cu - 7 * (cu > 0), left_context=x[:, 4:7])
    assert torch.allclose(tail, full[:, 7:])
