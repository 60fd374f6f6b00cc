"""Every row of the kernel table, walked naive → reference → Triton on its own example, and
through the public path (the row called as ``dispatch.py`` calls it) against plain autograd
of the reference.

Tolerances: fp64 naive vs reference 1e-10 (only summation order differs); the public path
under the torch backend 1e-12 (it runs the same reference, recomputed in backward); fp32
reference vs Triton (interpreted) 1e-4, the kernels' tolerance in their own tests (products
and sums in another order, some in tensor-core tiles).
"""

from __future__ import annotations

import pytest
import torch

from baton.kernels import kernel_backend
from baton.kernels.registry import OPS, TILING, Shape
from tests.conftest import REPO
from tests.helpers import assert_close

SHAPE = Shape(T=40, H=2, K=16, V=16, chunk=16)


def on(call: tuple[tuple, dict], dtype: torch.dtype, differentiable: bool) -> tuple[tuple, dict, list]:
    """A fresh copy of a call with its floating tensors in ``dtype``, and the leaves they come
    from where the op differentiates (the call gets copies of them: an op may add into one in
    place, as the relay's correction adds into the scan's output)."""
    found = []

    def fresh(x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        leaf = x.detach().to(dtype).requires_grad_(differentiable)
        found.append(leaf)
        return leaf.clone() if differentiable else leaf

    args, kwargs = call
    return tuple(fresh(a) for a in args), {k: fresh(v) for k, v in kwargs.items()}, found if differentiable else []


def outputs_and_grads(fn, call: tuple[tuple, dict, list]) -> list[torch.Tensor]:
    """fn's outputs, then the gradients of its inputs under fixed random output weights."""
    args, kwargs, inputs = call
    out = fn(*args, **kwargs)
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o is not None]
    if not inputs:
        return [o.detach() for o in outs]
    gen = torch.Generator().manual_seed(1)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() for o in outs)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [o.detach() for o in outs] + [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, inputs)]


def compare(ours: list[torch.Tensor], theirs: list[torch.Tensor], rtol: float, what: str) -> None:
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a.double(), b.double(), rtol, f"{what}, tensor {i}")


def calls(name: str, dtype: torch.dtype = torch.float32) -> list[tuple[tuple, dict]]:
    return OPS[name].example(SHAPE, dtype, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", [n for n, op in OPS.items() if op.naive is not None])
def test_reference_follows_the_token_loop(name):
    op = OPS[name]
    for call in calls(name):
        without_chunks = (call[0], {k: v for k, v in call[1].items() if k not in TILING})
        ours = outputs_and_grads(op.reference, on(call, torch.float64, True))
        theirs = outputs_and_grads(op.naive, on(without_chunks, torch.float64, True))
        compare(ours, theirs, 1e-10, f"{name}: reference vs naive")


@pytest.mark.parametrize("name", list(OPS))
def test_public_path_is_the_reference(name):
    """What a call runs on CPU (recomputed in backward, or through the scan op) gives what
    autograd of the plain reference gives."""
    op = OPS[name]
    differentiable = op.backward != "none"
    for call in calls(name, torch.float64):
        with kernel_backend("torch"):
            ours = outputs_and_grads(op, on(call, torch.float64, differentiable))
        theirs = outputs_and_grads(op.reference, on(call, torch.float64, differentiable))
        compare(ours, theirs, 1e-12, f"{name}: public path vs reference")


@pytest.mark.interpret
@pytest.mark.parametrize("name", [n for n, op in OPS.items() if op.triton is not None and not op.cuda_only])
def test_triton_follows_the_reference(name, triton_kernels):
    """(The CUDA-only kernels, FlexAttention's, have their own test: test_attention_flex.py.)"""
    op = OPS[name]
    differentiable = op.backward != "none"
    for call in calls(name):
        ours = outputs_and_grads(op, on(call, torch.float32, differentiable))
        theirs = outputs_and_grads(op.reference, on(call, torch.float32, differentiable))
        compare(ours, theirs, 1e-4, f"{name}: Triton vs reference")


def test_every_triton_file_has_its_reference_beside_it():
    kernels = REPO / "baton" / "kernels"
    refs = {p.name.replace("_ref", "") for p in kernels.glob("*_ref.py")}
    unpaired = [p.name for p in kernels.glob("*_triton.py") if p.name.replace("_triton", "") not in refs]
    assert unpaired == []


@pytest.mark.interpret
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", [n for n, op in OPS.items() if op.custom_op])
def test_fake_functions_give_the_real_shapes(name, backend):
    """The custom ops' fake (meta) functions, what torch.compile traces with: the row called on
    fake tensors gives outputs of the real run's shapes and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    op = OPS[name]
    for call in calls(name):
        args, kwargs, _ = on(call, torch.float32, False)
        with kernel_backend(backend):
            real = op(*args, **kwargs)
            with FakeTensorMode(shape_env=ShapeEnv()) as mode:  # a dynamic size: the Triton scan's chunks
                fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
                fake_kwargs = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                fake = op(*fake_args, **fake_kwargs)
        real, fake = (x if isinstance(x, tuple) else (x,) for x in (real, fake))
        assert [(tuple(t.shape), t.dtype) for t in fake] == [(tuple(t.shape), t.dtype) for t in real]
