"""The model on the Triton kernels (interpreted on CPU) matches the model on the references."""

import pytest
import torch

from baton.config import ModelConfig
from baton.kernels import kernel_backend
from baton.kernels.backend import current_backend, decide
from baton.models.lm import RecurrentLM, token_losses

pytestmark = pytest.mark.interpret

pytest.importorskip("triton")


@pytest.mark.parametrize("mixer", ["gla", "ssd"])
def test_triton_backend_matches_reference(mixer):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer=mixer, d_model=32, n_layers=1, n_heads=2, ssd_head_dim=16, chunk_size=16)
    model = RecurrentLM(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (1, 40))
    cu = torch.tensor([0, 13, 40])
    results = []
    for backend in ("torch", "triton"):
        model.zero_grad()
        with kernel_backend(backend):
            loss = token_losses(model(tokens, cu), tokens)[0] / tokens.numel()
            loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_ref, grads_ref), (loss, grads) = results
    # fp32 throughout; the kernels differ from the reference only in summation order.
    assert torch.allclose(loss, loss_ref, rtol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, rtol=1e-4, atol=1e-6)


def test_rejects_unknown_backend():
    with pytest.raises(ValueError, match="one of auto, triton, torch"):
        with kernel_backend("cuda"):
            pass


def test_the_backend_is_scoped_and_says_why(monkeypatch):
    x = torch.zeros(1)
    assert current_backend() == "auto" and decide(x) == (False, "kernel backend auto on a CPU tensor")
    with kernel_backend("triton"):
        with kernel_backend("torch"):
            assert decide(x) == (False, "kernel backend torch")
        assert decide(x) == (True, "Triton's interpreter (TRITON_INTERPRET=1)")
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(RuntimeError, match="kernel backend 'triton': the Triton kernels need a CUDA device; set"):
            decide(x)
    assert current_backend() == "auto"
