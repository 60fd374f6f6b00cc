"""Compile the Triton kernels one training step (and a decoding step) launches for a GPU that
is not here.

``python -m baton.kernels.compile_offline ARCH GATES DTYPE CHUNK OUT.json`` runs the forward
and backward of the chunked scan, of both relay ops, of the delta rule's state walk and of the
gated norm, and Newton's diagonal scans, on CPU tensors, with Triton's real
compiler (down to ptxas) targeting compute capability ARCH (90: H100, 80: A100), and writes
one record per compiled kernel. A driver that only answers "which GPU" stands in for the
missing one and launches stop after compiling, so outputs are garbage and only the
compilation counts. Triton's interpreter, which the kernel tests use on CPU, runs the
kernels' Python and so accepts code the compiler rejects or a GPU's shared memory cannot
hold; this catches both without a GPU.

Needs a process of its own: the kernels read TRITON_INTERPRET and BATON_AUTOTUNE when they
are defined, and Triton stays patched to compile without launching. Its cache directory is
a fresh temporary one, so every kernel is really compiled and the tuner's placeholder
timings never reach the cache a GPU run would read its tuned settings from.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # before Triton reads them
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="baton-compile-offline-")
atexit.register(shutil.rmtree, os.environ["TRITON_CACHE_DIR"], ignore_errors=True)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
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


def compile_one_step(
    arch: int, gates: str, dtype: torch.dtype, chunk_size: int = 64, every_candidate: bool = False
) -> list[tuple]:
    """Compile what a forward and backward of the scan and the relay ops launch: with the
    untuned launch settings, or (``every_candidate``) every setting the autotuner would time.
    Returns (record, compiled kernel) pairs; a record names the kernel and its settings."""
    os.environ["BATON_AUTOTUNE"] = "1" if every_candidate else "0"
    triton.runtime.driver.set_active(CompileOnlyDriver(arch))
    compiled = []
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        meta = kernel.metadata
        tiles = {name: kwargs[name] for name in ("BK", "BV") if name in kwargs}
        record = {"kernel": self.__name__, "warps": meta.num_warps, "stages": meta.num_stages, "tiles": tiles,
                  "shared_bytes": meta.shared}  # fmt: skip
        if record not in [r for r, _ in compiled]:  # the tuner re-runs its choice
            compiled.append((record, kernel))
        return kernel

    JITFunction.run = compile_only
    # The tuner compiles each candidate through JITFunction.run; the timing is skipped.
    Autotuner.do_bench = property(lambda self: lambda call, quantiles: (call(), [1.0] * len(quantiles))[1])
    from baton.kernels.delta_triton import matrix_state_walk
    from baton.kernels.diag_triton import diag_scan_triton
    from baton.kernels.layout import build_layout
    from baton.kernels.norm_gate_triton import norm_gate_backward, norm_gate_forward
    from baton.kernels.ops import chunk_scan_triton
    from baton.kernels.relay_triton import add_state_correction_triton, segment_summary_triton
    from baton.kernels.step_triton import recurrent_step_triton

    T, H, K, V = 2 * chunk_size + 32, 2, 128, 128  # a 1.3B model's head dims; a partial chunk too
    q, k = torch.randn(1, T, H, K, dtype=dtype), torch.randn(1, T, H, K, dtype=dtype)
    v = torch.randn(1, T, H, V, dtype=dtype)
    g = -torch.rand(1, T, H, K) if gates == "gla" else -torch.rand(1, T, H)
    q, k, v, g = (x.requires_grad_() for x in (q, k, v, g))
    o, final = chunk_scan_triton(q, k, v, g, initial_state=torch.zeros(1, H, K, V), chunk_size=chunk_size)
    (o.float().sum() + final.sum()).backward()
    log_A, S = segment_summary_triton(k, v, g, 100)
    (log_A.float().sum() + S.sum()).backward()
    scan_out = torch.zeros(1, T, H, V, dtype=dtype, requires_grad=True)
    state = torch.randn(H, K, V, requires_grad=True)
    add_state_correction_triton(scan_out.clone(), q, g, state, 100, 0.1).float().sum().backward()
    one = lambda x: x[:, 0].detach()  # noqa: E731 - one token of each input, for a decoding step
    recurrent_step_triton(one(q), one(k), one(v), one(g), torch.zeros(1, H, K, V), 0.1)
    # The delta rule's state walk at Gated DeltaNet's 1.3B head (K 256, V 512), forward and backward.
    layout = build_layout(torch.tensor([0, T]), chunk_size, torch.device("cpu"))
    M = torch.randn(layout.n_chunks, H, 256, 256, requires_grad=True)
    update = torch.randn(layout.n_chunks, H, 256, 512, requires_grad=True)
    states_in, final = matrix_state_walk(M, update, layout, None)
    (states_in.sum() + final.sum()).backward()
    # The gated norm, both orders: per head (GLA, Gated DeltaNet) and over Mamba2's inner width.
    for width, norm_first in ((V, True), (2048, False)):
        x, gate = torch.randn(T, width, dtype=dtype), torch.randn(T, width, dtype=dtype)
        y, rstd = norm_gate_forward(x, gate, torch.ones(width), 1e-6, norm_first)
        norm_gate_backward(x, gate, torch.ones(width), rstd, torch.ones_like(y), norm_first)
    # Newton's linear solves: ParaGRU's diagonal (forward) and ParaLSTM's 2×2 blocks (reversed).
    for pair in ((), (2,)):
        a, b = torch.rand(1, T, H, K, *pair, *pair), torch.randn(1, T, H, K, *pair)
        diag_scan_triton(a, b, torch.zeros(1, H, K, *pair), None, reverse=bool(pair))
    return compiled


if __name__ == "__main__":
    arch, gates, dtype, chunk, out = sys.argv[1:]
    with open(out, "w") as f:
        json.dump([record for record, _ in compile_one_step(int(arch), gates, getattr(torch, dtype), int(chunk))], f)
