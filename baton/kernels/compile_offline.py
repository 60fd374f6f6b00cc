"""Compile the Triton kernels one training step (and a decoding step) launches for a GPU that
is not here.

``python -m baton.kernels.compile_offline ARCH GATES DTYPE CHUNK OUT.json`` runs the forward
and backward of every Triton implementation in the op table (``registry.py``) on its example,
on CPU tensors, with Triton's real
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


def run_forward_and_backward(fn, args: tuple, kwargs: dict, differentiable: bool) -> None:
    """One call of a Triton implementation, and its backward where it has one: what a step
    launches of it. Floating inputs become leaves (their copies enter the call: an op may add
    into one in place)."""

    def leaf(x):
        floating = isinstance(x, torch.Tensor) and x.is_floating_point()
        return x.detach().requires_grad_().clone() if differentiable and floating else x

    args, kwargs = tuple(map(leaf, args)), {k: leaf(v) for k, v in kwargs.items()}
    out = fn(*args, **kwargs)
    if differentiable:
        sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,))).backward()


def compile_one_step(
    arch: int, gates: str, dtype: torch.dtype, chunk_size: int = 64, every_candidate: bool = False
) -> list[tuple]:
    """Compile what a forward and backward of every op in the table launches: with the
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
    from baton.kernels.registry import OPS, Shape

    gen = torch.Generator().manual_seed(0)
    for op in OPS.values():
        if op.triton is None:
            continue
        K, V = op.compile_dims  # a 1.3B model's head dims (Gated DeltaNet's for the delta rule)
        shape = Shape(T=2 * chunk_size + 32, H=2, K=K, V=V, chunk=chunk_size, gates=gates)  # a partial chunk too
        for args, kwargs in op.example(shape, dtype, gen):
            run_forward_and_backward(op.triton_function(), args, kwargs, op.backward != "none")
    return compiled


if __name__ == "__main__":
    arch, gates, dtype, chunk, out = sys.argv[1:]
    with open(out, "w") as f:
        json.dump([record for record, _ in compile_one_step(int(arch), gates, getattr(torch, dtype), int(chunk))], f)
