"""The memory model's formulas against exact counts of what a block keeps for backward.

Each formula term is a tensor autograd keeps, so the predicted bytes per token must equal the
count (``profile/activations.py``: storages created in forward and alive when it ends) exactly:
per token is the difference between two lengths of one document (constants, such as autocast's
cached weight copies and the scans' per-document offsets, cancel), the block input included, its
output (the next block's input) not.
Every mixer and policy on the reference path in bf16 and fp32, and each mixer on the Triton path
(interpreted on CPU: small shapes) without checkpointing, the case with the most terms.
"""

from __future__ import annotations

import pytest
import torch

from baton.config import ModelConfig
from baton.kernels import kernel_backend
from baton.models.lm import RecurrentLM
from baton.models.memory import activation_bytes
from baton.parallel.recompute import apply_activation_checkpointing
from baton.parallel.relay import RelayRecord
from baton.profile.activations import ActivationMeter, release_interpreter_arguments

SHAPE = dict(d_model=64, n_layers=1, n_heads=2, vocab_size=300, ssd_head_dim=32, ssd_state_dim=16, gdn_head_dim=16)


def block_kept(cfg: ModelConfig, policy: str, T: int, dtype: torch.dtype) -> int:
    torch.manual_seed(0)
    model = RecurrentLM(cfg)
    apply_activation_checkpointing(model, policy, RelayRecord())
    block, cu = model.blocks[0], torch.tensor([0, T])  # one document of whole chunks: no padding
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16), ActivationMeter() as meter:
        x = torch.randn(1, T, cfg.d_model, dtype=dtype, requires_grad=True)  # the block input, counted
        y, _ = block(x, cu)
    release_interpreter_arguments()
    return meter.alive_bytes(exclude=[*model.parameters(), cu, y])


def measured_per_token(cfg: ModelConfig, policy: str, dtype: torch.dtype, T: int) -> float:
    return (block_kept(cfg, policy, 2 * T, dtype) - block_kept(cfg, policy, T, dtype)) / T


ATTENTION = dict(attn_heads=4, attn_head_dim=16, attn_block=32)


@pytest.mark.parametrize("mixer", ["gla", "ssd", "gdn", "paragru", "paralstm", "attn", "attn-norotary"])
@pytest.mark.parametrize("policy", ["none", "full", "mixer"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_reference_path(mixer, policy, dtype):
    """An attention layer measured as the first layer of a two-layer hybrid, with and without
    rotary (its cos and sin, and in fp32 the rotated copies); 4 heads over 2 key/value heads."""
    if mixer.startswith("attn"):
        rotary = 0.0 if mixer.endswith("norotary") else 0.5
        shape = {**SHAPE, "n_layers": 2, **ATTENTION, "rotary_fraction": rotary}
        cfg = ModelConfig(mixer="gdn", layer_pattern="attn,gdn", chunk_size=32, **shape)
        predicted = activation_bytes(cfg.for_mixer("attn"), policy, dtype.itemsize, "reference", True).per_layer
    else:
        cfg = ModelConfig(mixer=mixer, chunk_size=32, **SHAPE)
        predicted = activation_bytes(cfg, policy, dtype.itemsize, "reference", True).per_layer
    with kernel_backend("torch"):
        assert measured_per_token(cfg, policy, dtype, 128) == predicted


@pytest.mark.parametrize("mixer", ["gla", "ssd", "gdn"])
@pytest.mark.interpret
def test_triton_path(mixer, triton_kernels):
    cfg = ModelConfig(mixer=mixer, chunk_size=16, **SHAPE)
    predicted = activation_bytes(cfg, "none", 2, "triton", True).per_layer
    assert measured_per_token(cfg, "none", torch.bfloat16, 32) == predicted


def test_full_checkpointing_keeps_the_block_input_alone():
    """The 1.3B shape: a bf16 block input of 2 d bytes per token per layer."""
    cfg = ModelConfig(d_model=2048, n_layers=24, n_heads=4, vocab_size=32000, tie_embeddings=False)
    acts = activation_bytes(cfg, "full", 2, "triton", True)
    assert acts.per_layer == 2 * cfg.d_model and acts.head_loss == 2 * cfg.d_model + 4
