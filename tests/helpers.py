"""What many tests share: relative errors, an assertion that names what it compares, and the
small inputs, models and batches the kernel, model and parallel tests build."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from baton.config import ModelConfig
from baton.data.loader import Batch, pack
from baton.models.lm import RecurrentLM

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` in fp64: the error relative to the expected tensor's norm."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a − b| / max |b|``: the largest error relative to the largest expected entry."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    """``actual`` within ``rtol`` of ``expected`` relative to its norm (:func:`rel`; exact
    equality where ``expected`` is zero); the failure names ``what``, the error and the bound."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    if not expected.any():
        assert not actual.any(), f"{what}: expected zeros, largest entry {actual.abs().max().item():.3e}"
        return
    error = rel(actual, expected)
    assert error <= rtol, f"{what}: relative error {error:.3e} over the tolerance {rtol:.0e}"


def random_inputs(gate, T, H=2, K=8, V=6, B=1, decay=1.0, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    g_shape = (B, T, H, K) if gate == "gla" else (B, T, H)
    g = -torch.rand(g_shape, generator=gen, dtype=dtype) * decay
    return [x.requires_grad_() for x in (q, k, v, g)]


def random_cu_seqlens(T, n_docs, seed):
    gen = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(T - 1, generator=gen)[: n_docs - 1] + 1
    return torch.cat([torch.tensor([0]), cuts.sort().values, torch.tensor([T])])


def delta_inputs(T, H=2, K=8, V=6, B=1, beta_max=2.0, decay=1.0, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    g = -torch.rand(B, T, H, generator=gen, dtype=dtype) * decay
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype) * beta_max
    return [x.requires_grad_() for x in (q, k, v, g, beta)]


def tiny_config(mixer: str) -> ModelConfig:
    """A two-layer model of ``mixer`` ("gdn-neg": β in [0, 2]; "gdn+attn": a hybrid, one
    layer of each, the attention grouped-query with 4 heads over 2 and rotary on half its dims)."""
    pattern = mixer.removesuffix("-neg").replace("+", ",") if "+" in mixer else ""
    return ModelConfig(
        mixer=mixer.split("+")[0].removesuffix("-neg"), layer_pattern=pattern, allow_neg_eigval=mixer.endswith("-neg"),
        d_model=32, n_layers=2, n_heads=2, ssd_head_dim=16, ssd_state_dim=8, gdn_head_dim=16, chunk_size=16,
        attn_heads=4, attn_kv_heads=2, attn_head_dim=8, rotary_fraction=0.5, rotary_theta=10_000.0, attn_block=16,
    )  # fmt: skip


def tiny_model(mixer: str) -> RecurrentLM:
    torch.manual_seed(0)
    return RecurrentLM(tiny_config(mixer))


def make_batch(lengths: list[int], seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    return pack([rng.integers(0, 257, size=n) for n in lengths], list(range(len(lengths))))
