import os
import subprocess
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


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One data cache for the whole run: the runs' synthetic corpora are generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def slurm():
    """The local SLURM cluster (two fake nodes), started once for every test that needs it."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (CI runs as root)")
    env = dict(os.environ, SLURM_LOCAL_NODES="2")
    proc = subprocess.run(["bash", str(REPO / "slurm" / "start-local-slurm.sh")], env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
