"""``train.compile``: a block is one graph (the scans are custom ops), and compiled equals eager.

Tolerance: compiled vs eager, fp32, 1e-5 relative to the largest value. Inductor fuses the ops
around the scans and reorders their fp32 reductions (the norms' sums, the gates); measured
differences are 1e-7 to 1e-6 on these shapes, while an error in an op's fake shapes or its
backward wiring gives O(1).
"""

import pytest
import torch

from baton.config import ModelConfig
from baton.kernels import kernel_backend
from baton.models.lm import Block
from tests.helpers import rel_max

pytestmark = pytest.mark.interpret

SHAPE = dict(vocab_size=300, d_model=64, n_layers=1, n_heads=2, chunk_size=16)


def block_and_input(mixer: str, T: int = 50) -> tuple[Block, torch.Tensor]:
    torch.manual_seed(0)
    return Block(ModelConfig(mixer=mixer, **SHAPE), mixer), torch.randn(1, T, SHAPE["d_model"], requires_grad=True)


def outputs_and_grads(block: Block, forward, x: torch.Tensor, cu: torch.Tensor) -> list[torch.Tensor]:
    x.grad = None
    block.zero_grad()
    y, _ = forward(x, cu)
    (y.square().sum()).backward()
    return [y.detach(), x.grad, *(p.grad for p in block.parameters())]


@pytest.mark.parametrize("mixer", ["gla", "ssd", "gdn"])
def test_a_block_compiles_into_one_graph(mixer):
    block, x = block_and_input(mixer)
    explained = torch._dynamo.explain(block)(x, torch.tensor([0, 20, 50]))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("mixer", ["gla", "ssd", "gdn"])
def test_compiled_block_equals_eager(mixer):
    block, x = block_and_input(mixer)
    compiled = torch.compile(block.forward)
    layouts = [torch.tensor([0, 20, 50])]  # documents cut inside chunks
    if mixer == "gla":  # another number of documents: one recompile, with dynamic shapes
        layouts.append(torch.tensor([0, 7, 33, 34, 50]))
    for cu in layouts:
        eager = outputs_and_grads(block, block, x, cu)
        ours = outputs_and_grads(block, compiled, x, cu)
        for name, a, b in zip(["y", "dx", *(n for n, _ in block.named_parameters())], ours, eager):
            assert rel_max(a, b) < 1e-5, (mixer, name)


def test_a_compiled_attention_block_equals_eager():
    """A hybrid's attention block: its graphs break only at the attention op (it reads document
    boundaries as numbers: eager between the graphs of the projections, norms and gate)."""
    torch.manual_seed(0)
    shape = {**SHAPE, "n_layers": 2, "gdn_head_dim": 16, "attn_heads": 4, "attn_kv_heads": 2, "attn_head_dim": 16}
    block = Block(ModelConfig(mixer="gdn", layer_pattern="gdn,attn", **shape), "attn")
    x, cu = torch.randn(1, 50, SHAPE["d_model"], requires_grad=True), torch.tensor([0, 20, 50])
    explained = torch._dynamo.explain(block)(x, cu)
    assert explained.break_reasons and all(
        "torch.compiler.disable" in r.reason and "attention.py" in str(r.user_stack[-1])
        for r in explained.break_reasons
    ), explained.break_reasons
    eager = outputs_and_grads(block, block, x, cu)
    ours = outputs_and_grads(block, torch.compile(block.forward), x, cu)
    for name, a, b in zip(["y", "dx", *(n for n, _ in block.named_parameters())], ours, eager):
        assert rel_max(a, b) < 1e-5, name


def test_compiled_triton_scan_equals_eager_reference():
    """The Triton scan's op (under the interpreter here) in one graph with the rest of the
    block: its chunk-layout outputs have a size the tracer cannot know."""
    block, x = block_and_input("gla")
    cu = torch.tensor([0, 20, 50])
    with kernel_backend("torch"):
        eager = outputs_and_grads(block, block, x, cu)
    with kernel_backend("triton"), torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        explained = torch._dynamo.explain(block)(x, cu)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        ours = outputs_and_grads(block, torch.compile(block.forward), x, cu)
    for a, b in zip(ours, eager):
        assert rel_max(a, b) < 1e-5
