"""Exact activation memory: the bytes a forward pass leaves alive for its backward.

:class:`ActivationMeter` is a dispatch mode that notes every storage an op creates inside it;
:meth:`ActivationMeter.alive_bytes` sums those still alive. Called after a forward and before
its backward (with the forward's output kept, the inputs and parameters excluded), that is
everything autograd keeps: the tensors ops saved for backward, what activation checkpointing
holds for its recomputation (inputs kept by reference, which ``saved_tensors_hooks`` cannot
see: inside a checkpointed region its own hooks replace any outer ones), autocast's cached
low-precision weight copies, and states carried between slices. Works on any device, also
through Triton kernels (their outputs are allocated by torch ops).
"""

from __future__ import annotations

import gc
import os

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class ActivationMeter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self._created: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                known = self._created.get(ptr)
                if ptr and (known is None or known[0].expired()):  # a freed address may be reused
                    self._created[ptr] = (StorageWeakRef(storage), storage.nbytes())
        return out

    def alive_bytes(self, exclude: list[torch.Tensor] = ()) -> int:
        """Bytes of the storages created inside the mode that are still alive, except those of
        ``exclude`` (parameters and inputs, whose views ops may return)."""
        skip = {t.untyped_storage().data_ptr() for t in exclude}
        return sum(n for ptr, (ref, n) in self._created.items() if not ref.expired() and ptr not in skip)


def release_interpreter_arguments() -> None:
    """Triton's interpreter (``TRITON_INTERPRET=1``) keeps the arguments of its last launch
    alive until the next one, a host-side artefact (compiled kernels hold nothing): one tiny
    launch releases them, so that :meth:`ActivationMeter.alive_bytes` counts what autograd keeps."""
    from baton.kernels.ops import chunk_scan_triton

    with torch.no_grad():
        zeros = torch.zeros(1, 16, 1, 16)
        chunk_scan_triton(zeros, zeros, zeros, -torch.ones(1, 16, 1, 16), chunk_size=16)
    gc.collect()  # and the reference cycles it leaves holding a launch's arguments


def kept_for_backward(
    model: nn.Module, tokens: Tensor, cu_seqlens: Tensor, labels: Tensor, loss_chunk: int, dtype: torch.dtype | None
) -> int:
    """Bytes a forward of ``model`` to its summed loss leaves alive for backward (parameters,
    inputs and the loss excluded), under autocast to ``dtype`` (None: fp32)."""
    enabled = dtype is not None
    with torch.autocast(tokens.device.type, dtype=dtype, enabled=enabled), ActivationMeter() as meter:
        loss = model(tokens, cu_seqlens, labels, loss_chunk)
    if os.environ.get("TRITON_INTERPRET") == "1":
        release_interpreter_arguments()
    return meter.alive_bytes(exclude=[*model.parameters(), tokens, cu_seqlens, labels, loss])
