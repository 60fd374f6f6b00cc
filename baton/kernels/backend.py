"""Which implementation of a kernel op runs: the Triton kernel or the PyTorch reference.

One decision for every op (:func:`decide`), from the backend chosen for the work at hand
(``train.kernels``: ``auto``, ``triton`` or ``torch``) and the tensors' device. The choice is
a context (:func:`kernel_backend`), entered by whatever runs a job (the trainer, ``baton
tune``, ``replay``, ``generate``, ``eval``) or a test; outside any context it is ``auto``.
It holds for the whole process while the context is open, threads included: autograd runs
CUDA backwards on its own threads, and the relay runs on one of its own.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

from baton.config import BACKENDS

_chosen = ["auto"]  # innermost open kernel_backend context's choice


@contextlib.contextmanager
def kernel_backend(name: str) -> Iterator[None]:
    """Run the enclosed work with backend ``name``: ``auto`` (Triton for CUDA tensors, the
    reference otherwise), ``triton`` or ``torch`` (always). Contexts nest."""
    if name not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    _chosen.append(name)
    try:
        yield
    finally:
        _chosen.pop()


def current_backend() -> str:
    return _chosen[-1]


class TritonBackend:
    """The Triton kernels: on CUDA devices, or on CPU through Triton's interpreter."""

    name = "triton"

    @staticmethod
    def is_available(device: torch.device) -> tuple[bool, str]:
        """Whether the kernels can run on ``device``, and why (or why not)."""
        if device.type == "cuda":
            return True, "a CUDA device"
        if os.environ.get("TRITON_INTERPRET") == "1":
            return True, "Triton's interpreter (TRITON_INTERPRET=1)"
        return False, (
            "the Triton kernels need a CUDA device; set TRITON_INTERPRET=1 to run them on CPU through "
            "Triton's interpreter (slow)"
        )


TRITON = TritonBackend()


def decide(x: Tensor) -> tuple[bool, str]:
    """Whether ``x``'s op runs its Triton kernel, and why: the chosen backend and the device
    alone, so that ``torch.compile`` traces it. A forced ``triton`` that cannot run here is
    an error, not a silent fallback."""
    chosen = current_backend()
    if chosen == "torch":
        return False, "kernel backend torch"
    if chosen == "auto" and not x.is_cuda:
        return False, "kernel backend auto on a CPU tensor"
    available, why = TRITON.is_available(x.device)
    if not available:
        raise RuntimeError(f"kernel backend {chosen!r}: {why}")
    return True, why


def use_triton(x: Tensor) -> bool:
    """:func:`decide`'s answer alone."""
    return decide(x)[0]


def hopper_ptxas_warning(capability: tuple[int, int], ptxas_version: str) -> str | None:
    """Why the assembler Triton uses for this GPU may miscompile the kernels, or None.

    CUDA's ptxas before 13.3 can reuse registers that a Hopper (sm_90) asynchronous
    tensor-core product (WGMMA) is still reading: wrong results, no error
    (triton-lang/triton#11781). Triton before 3.9 assembles Hopper kernels with its CUDA 12
    ptxas, and the scans feed such products operands computed in registers (gated q, k).
    """
    version = tuple(map(int, re.findall(r"\d+", ptxas_version)[:2]))
    if capability[0] != 9 or version >= (13, 3):
        return None
    return (
        f"Triton assembles Hopper kernels with ptxas {ptxas_version}, which can silently miscompile "
        "tensor-core products of operands held in registers, as baton's kernels use "
        "(triton-lang/triton#11781); install triton>=3.9 or set TRITON_PTXAS_PATH to the ptxas of CUDA >= 13.3"
    )


def triton_ptxas(arch: int) -> tuple[str, str]:
    """Path and version of the ptxas Triton assembles kernels for compute capability ``arch``
    (90 for 9.0) with."""
    from triton.backends.nvidia.compiler import get_ptxas

    tool = get_ptxas(arch)
    return (tool.path, tool.version) if hasattr(tool, "version") else tool  # older Tritons: a tuple


@functools.cache
def _check_assembler(device: int) -> None:
    if torch.version.hip:  # ROCm: no ptxas, and its capabilities are not NVIDIA's
        return
    major, minor = torch.cuda.get_device_capability(device)
    reason = hopper_ptxas_warning((major, minor), triton_ptxas(major * 10 + minor)[1])
    if reason:
        warnings.warn(reason, stacklevel=4)


def check_assembler(x: Tensor) -> None:
    """Warn once per GPU where Triton's assembler may miscompile the kernels."""
    if x.is_cuda:
        _check_assembler(x.device.index if x.device.index is not None else torch.cuda.current_device())
