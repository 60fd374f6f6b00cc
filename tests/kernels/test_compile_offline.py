"""Every Triton kernel compiles for an H100 and an A100, checked on a machine with neither.

The interpreter tests check the kernels' math; this checks that Triton's compiler (to PTX,
then ptxas) accepts them for real GPUs, and that each kernel's shared memory fits the GPU,
which the launch would otherwise refuse. The combinations cover both gate layouts, the bf16
tensor-core path on Hopper (what training under bf16 autocast runs), the exact fp32 path on
Ampere, and chunks of 128, the largest tiles (in fp32 on the A100, the tightest fit). Head
dims 128, as in a 1.3B model, with untuned launch settings (what a run with BATON_AUTOTUNE=0
uses; the tuner skips candidates that do not fit).
"""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.interpret

pytest.importorskip("triton")

# Largest shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin).
SHARED_LIMIT = {90: 232448, 80: 166912}
KERNEL_SOURCES = sorted((REPO / "baton" / "kernels").glob("*_triton.py"))  # each beside its *_ref.py


def defined_kernels() -> set[str]:
    return {name for path in KERNEL_SOURCES for name in re.findall(r"^def (_\w+_kernel)\(", path.read_text(), re.M)}


@pytest.mark.parametrize(
    "arch,gates,dtype,chunk", [(90, "gla", "bfloat16", 64), (90, "ssd", "bfloat16", 128), (80, "gla", "float32", 128)]
)
def test_every_kernel_compiles_and_fits_in_shared_memory(tmp_path, arch, gates, dtype, chunk):
    out = tmp_path / "compiled.json"
    proc = subprocess.run(
        [sys.executable, "-m", "baton.kernels.compile_offline", str(arch), gates, dtype, str(chunk), str(out)],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    compiled = json.loads(out.read_text())
    assert {r["kernel"] for r in compiled} == defined_kernels()
    too_big = [r for r in compiled if r["shared_bytes"] > SHARED_LIMIT[arch]]
    assert not too_big, f"shared memory over sm_{arch}'s {SHARED_LIMIT[arch]} bytes: {too_big}"
