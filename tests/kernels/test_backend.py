"""Which assembler the dispatch warns about: Hopper with a ptxas that can miscompile WGMMA."""

import pytest

from baton.kernels.backend import hopper_ptxas_warning


@pytest.mark.parametrize("ptxas", ["12.8", "12.9", "13.1"])  # Triton 3.6-3.8's, and CUDA 13.1's
def test_hopper_with_an_unfixed_ptxas_is_warned_about(ptxas):
    message = hopper_ptxas_warning((9, 0), ptxas)
    assert f"ptxas {ptxas}" in message and "triton>=3.9" in message and "TRITON_PTXAS_PATH" in message


@pytest.mark.parametrize(
    "capability,ptxas",
    [
        ((9, 0), "13.3"),  # fixed
        ((9, 0), "13.10"),  # compared as numbers, not strings
        ((9, 0), "14.0"),
        ((8, 0), "12.8"),  # Ampere has no WGMMA
    ],
)
def test_other_toolchains_are_not(capability, ptxas):
    assert hopper_ptxas_warning(capability, ptxas) is None
