"""The signed diagonal scan against a token-by-token loop: forward and reversed, diagonal and
2×2 blocks per unit, packed documents (one empty), initial states, coefficients of either sign
and above one. fp64, so 1e-12 is round-off: the scan composes the same products in another
order."""

import pytest
import torch

from baton.kernels.diag_ref import diag_scan_ref


def loop(a, b, h0, cu, reverse):
    h, final = torch.zeros_like(b), h0.clone()
    for n in range(len(cu) - 1):
        state = h0[n]
        tokens = range(cu[n], cu[n + 1])
        for t in reversed(tokens) if reverse else tokens:
            step = (a[0, t] @ state[..., None])[..., 0] if a.dim() > b.dim() else a[0, t] * state
            state = step + b[0, t]
            h[0, t] = state
        final[n] = state
    return h, final


@pytest.mark.parametrize("block", [(), (2,)], ids=["diagonal", "2x2-blocks"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_diag_scan_matches_the_loop(reverse, block):
    gen = torch.Generator().manual_seed(0)
    T, cu = 37, [0, 5, 5, 20, 37]
    a = torch.randn(1, T, 2, 3, *block, *block, generator=gen, dtype=torch.float64)  # signed, some above one
    a = a * (1.5 if not block else 0.9)
    b = torch.randn(1, T, 2, 3, *block, generator=gen, dtype=torch.float64)
    h0 = torch.randn(4, 2, 3, *block, generator=gen, dtype=torch.float64)
    h, final = diag_scan_ref(a, b, h0, torch.tensor(cu), reverse=reverse)
    ref_h, ref_final = loop(a, b, h0, cu, reverse)
    assert torch.allclose(h, ref_h, rtol=1e-12, atol=1e-12) and torch.allclose(final, ref_final, rtol=1e-12, atol=1e-12)


def test_diag_scan_rows_are_sequences_without_cu_seqlens():
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(3, 9, 1, 2, generator=gen, dtype=torch.float64) for _ in range(2))
    h, final = diag_scan_ref(a, b)
    flat = (x.reshape(1, 27, 1, 2) for x in (a, b))
    packed, packed_final = diag_scan_ref(*flat, None, torch.tensor([0, 9, 18, 27]))
    assert torch.equal(h.reshape(1, 27, 1, 2), packed) and torch.equal(final, packed_final)
