"""The fused (chunked) head and loss against the plain one that builds all the logits."""

import pytest
import torch

from baton.config import ModelConfig
from baton.data.loader import IGNORE
from baton.models.lm import RecurrentLM
from baton.models.memory import activation_bytes
from baton.profile.activations import kept_for_backward


def loss_and_grads(model, tokens, labels, chunk, dtype=None):
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = model(tokens, torch.tensor([0, tokens.shape[1]]), labels, chunk)
    loss.backward()
    return loss.item(), [p.grad.float().clone() for p in model.parameters()]


@pytest.fixture
def model_and_batch():
    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(d_model=64, n_layers=1, n_heads=2, vocab_size=1000, chunk_size=16))
    tokens = torch.randint(0, 1000, (1, 300))
    labels = tokens.roll(-1, 1)
    labels[0, ::7] = IGNORE  # documents' last tokens have no target
    return model, tokens, labels


@pytest.mark.parametrize("chunk", [1, 64, 128, 1000])  # one token at a time; 300 = 4 x 64 + 44; one chunk
def test_fused_loss_equals_the_plain_loss_fp32(model_and_batch, chunk):
    """fp32: the same sums in other orders, 1e-5 relative (round-off is ~1e-7)."""
    model, tokens, labels = model_and_batch
    plain_loss, plain_grads = loss_and_grads(model, tokens, labels, 0)
    loss, grads = loss_and_grads(model, tokens, labels, chunk)
    assert abs(loss - plain_loss) / plain_loss < 1e-5
    for g, g_ref in zip(grads, plain_grads):
        assert ((g - g_ref).norm() / g_ref.norm()).item() < 1e-5


def test_fused_loss_under_bf16(model_and_batch):
    """bf16: the same bf16 logits, so the same loss; the head's gradient products round to bf16
    (8 bits, ~2e-3 relative) per chunk here and over all tokens there: the gradients differ by
    about that (1.9e-3 measured), and 1e-2 leaves five times that."""
    model, tokens, labels = model_and_batch
    plain_loss, plain_grads = loss_and_grads(model, tokens, labels, 0, torch.bfloat16)
    loss, grads = loss_and_grads(model, tokens, labels, 64, torch.bfloat16)
    assert abs(loss - plain_loss) / plain_loss < 1e-5
    for g, g_ref in zip(grads, plain_grads):
        assert ((g - g_ref).norm() / g_ref.norm()).item() < 1e-2


def test_fused_loss_keeps_its_input_and_one_number_per_token(model_and_batch):
    """What the head and loss keep for backward: the bf16 residual stream and the fp32
    log-sum-exp (2 d + 4 bytes per token); the plain loss also keeps the norm's output and an
    fp32 [tokens, vocabulary] log-softmax. The blocks keep the same either way, so per token
    (the slope over two lengths: autocast's cached bf16 head weight is a constant) the two
    differ by exactly the difference of the memory model's head terms."""
    model, tokens, labels = model_and_batch

    def plain_minus_fused(T: int) -> int:
        cu = torch.tensor([0, T])
        plain, fused = (kept_for_backward(model, tokens[:, :T], cu, labels[:, :T], c, torch.bfloat16) for c in (0, 64))
        return plain - fused

    heads = [activation_bytes(model.cfg, "none", 2, "reference", fused).head_loss for fused in (False, True)]
    assert heads[1] == 2 * model.cfg.d_model + 4
    assert plain_minus_fused(300) - plain_minus_fused(150) == 150 * (heads[0] - heads[1])
