"""Compile every Triton kernel one training step launches for a GPU that is not here.

``python -m tests.kernels.compile_offline ARCH GATES DTYPE OUT.json`` runs the forward and
backward of the chunked scan and of both relay ops on CPU tensors, with Triton's real
compiler (down to ptxas) targeting compute capability ARCH, and writes one record per
compiled kernel. A driver that only answers "which GPU" stands in for the missing one, and
launches stop after compiling, so the outputs are garbage and only the compilation counts.
The interpreter, which the other kernel tests use, runs the kernels' Python on NumPy and
so accepts code that the compiler rejects or cannot fit in a GPU's shared memory.

Runs in its own process: the kernels read TRITON_INTERPRET when they are defined.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
os.environ["BATON_AUTOTUNE"] = "0"  # the launch settings a run without tuning uses

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402


class CompileOnlyDriver:
    """What Triton asks its driver before compiling: the device, its stream and its target."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


def compile_one_step(arch: int, gates: str, dtype: torch.dtype) -> list[dict]:
    """Compile what a forward and backward of the scan and the relay ops launch."""
    triton.runtime.driver.set_active(CompileOnlyDriver(arch))
    records = []
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        meta = kernel.metadata
        records.append({"kernel": self.__name__, "warps": meta.num_warps, "stages": meta.num_stages,
                        "shared_bytes": meta.shared})  # fmt: skip
        return kernel

    JITFunction.run = compile_only
    from baton.kernels.relay_triton import add_state_correction_triton, segment_summary_triton
    from baton.kernels.scan_triton import chunk_scan_triton

    T, H, K, V = 160, 2, 128, 128  # a 1.3B model's head dims; 2.5 chunks, so masks are compiled too
    q, k = torch.randn(1, T, H, K, dtype=dtype), torch.randn(1, T, H, K, dtype=dtype)
    v = torch.randn(1, T, H, V, dtype=dtype)
    g = -torch.rand(1, T, H, K) if gates == "gla" else -torch.rand(1, T, H)
    q, k, v, g = (x.requires_grad_() for x in (q, k, v, g))
    o, final = chunk_scan_triton(q, k, v, g, initial_state=torch.zeros(1, H, K, V), chunk_size=64)
    (o.float().sum() + final.sum()).backward()
    log_A, S = segment_summary_triton(k, v, g, 100)
    (log_A.float().sum() + S.sum()).backward()
    o = torch.zeros(1, T, H, V, dtype=dtype, requires_grad=True)
    state = torch.randn(H, K, V, requires_grad=True)
    add_state_correction_triton(o.clone(), q, g, state, 100, 0.1).float().sum().backward()
    return records


if __name__ == "__main__":
    arch, gates, dtype, out = int(sys.argv[1]), sys.argv[2], getattr(torch, sys.argv[3]), sys.argv[4]
    with open(out, "w") as f:
        json.dump(compile_one_step(arch, gates, dtype), f)
