"""The Triton diagonal scan against the reference (interpreted on CPU): forward and reversed,
diagonal and 2×2 blocks, packed documents longer than a chunk (several chunks each), one
empty, initial states, and more units than one program's block (a masked second block).
fp32 against the fp64 reference: 1e-5 relative to the largest value (the kernel composes the
same products per chunk in another order)."""

import pytest
import torch

from baton.kernels.diag_ref import diag_scan_ref
from tests.helpers import rel_max

pytestmark = pytest.mark.interpret

triton = pytest.importorskip("triton")


@pytest.mark.parametrize("pair", [False, True], ids=["diagonal", "2x2-blocks"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_triton_scan_matches_the_reference(reverse, pair, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from baton.kernels.diag_triton import diag_scan_triton

    gen = torch.Generator().manual_seed(0)
    T, cu = 170, torch.tensor([0, 3, 3, 140, 170])
    shape = (1, T, 2, 65, *([2] if pair else []))  # 130 units: two blocks of 128
    a = (torch.rand(*shape, *([2] if pair else []), generator=gen, dtype=torch.float64) * 2 - 1) * 0.95
    if pair:
        a = a * 0.6  # keep the blocks' products bounded
    b = torch.randn(*shape, generator=gen, dtype=torch.float64)
    h0 = torch.randn(4, *shape[2:], generator=gen, dtype=torch.float64)
    ref_h, ref_final = diag_scan_ref(a, b, h0, cu, reverse=reverse)
    h, final = diag_scan_triton(a.float(), b.float(), h0.float(), cu, reverse=reverse)
    assert rel_max(h.double(), ref_h) < 1e-5 and rel_max(final.double(), ref_final) < 1e-5
    assert torch.equal(final[1].double(), h0[1].float().double())  # the empty document keeps its state


def test_triton_scan_rows_without_cu_seqlens(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from baton.kernels.diag_triton import diag_scan_triton

    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(3, 70, 1, 4, generator=gen) for _ in range(2))
    h, final = diag_scan_triton(a * 0.5, b)
    ref_h, ref_final = diag_scan_ref(a.double() * 0.5, b.double())
    assert rel_max(h.double(), ref_h) < 1e-5 and rel_max(final.double(), ref_final) < 1e-5
