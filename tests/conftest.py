import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# Without a GPU the Triton kernels run on CPU through Triton's interpreter. The variable is
# read when the kernels are defined, so it is set before any test imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU the tests check the math with Triton's default launch settings; autotuning would
# compile every candidate for each of the tests' many shapes. bench/kernels.py runs the tuned
# kernels and checks their agreement with the reference.
os.environ.setdefault("BATON_AUTOTUNE", "0")


@pytest.fixture
def triton_kernels():
    """The test's ops on the Triton kernels (interpreted on CPU)."""
    pytest.importorskip("triton")
    from baton.kernels import kernel_backend

    with kernel_backend("triton"):
        yield
