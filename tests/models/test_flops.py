"""Parameter counts and FLOPs per token against the real model."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from baton.config import ModelConfig, load_config
from baton.models.flops import causal_pairs, count_parameters, flops_per_token, scan_shape
from baton.models.lm import RecurrentLM
from tests.conftest import CONFIGS


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_parameter_count_of_every_preset(path):
    cfg = load_config(str(path)).model
    with torch.device("meta"):
        model = RecurrentLM(cfg)
    assert count_parameters(cfg) == sum(p.numel() for p in model.parameters())


def test_presets_have_the_advertised_sizes():
    sizes = {p.stem: count_parameters(load_config(str(p)).model) for p in CONFIGS.glob("*.yaml")}
    assert 100e6 < sizes["125m"] < 160e6
    assert 1.2e9 < sizes["1b"] < 1.5e9
    assert 6.5e9 < sizes["7b"] < 7.5e9


@pytest.mark.parametrize("mixer", ["paragru", "paralstm"])
def test_parameter_count_of_the_newton_mixers(mixer):
    cfg = ModelConfig(mixer=mixer, n_heads=4)
    assert count_parameters(cfg) == sum(p.numel() for p in RecurrentLM(cfg).parameters())


@pytest.mark.parametrize("mixer", ["gla", "ssd", "gdn", "paragru", "gdn+attn"])
@pytest.mark.parametrize("tie", [True, False])
def test_matmul_flops_match_flop_counter(mixer, tie):
    """Count the model's matmuls with torch's FLOP counter, with the scan (and attention) swapped
    for one without matmuls (ParaGRU's Newton iterations have none: elementwise); then count the
    scan alone (SSD reference performs exactly the terms of the formula)."""
    pattern = mixer.replace("+", ",") if "+" in mixer else ""
    cfg = ModelConfig(mixer=mixer.split("+")[0], layer_pattern=pattern, tie_embeddings=tie, chunk_size=16, n_layers=4)
    model = RecurrentLM(cfg)
    for block in model.blocks:
        block.mixer.scan = lambda q, k, v, *gates, **kw: (v * 1.0, None)
        block.mixer.attend = lambda q, kv, *args: q * 1.0
    T = 64
    tokens = torch.randint(0, 257, (1, T))
    with FlopCounterMode(display=False) as counter:
        model(tokens)
    assert counter.get_total_flops() == flops_per_token(cfg).matmul * T


def test_hybrid_parameters_and_attention_pairs():
    """A hybrid counts each layer as what it is; causal attention over a piece scores each
    query against its document's keys up to itself, also past a prefix from earlier ranks."""
    cfg = ModelConfig(mixer="gdn", layer_pattern="gdn,gdn,gdn,attn", n_layers=6, gdn_head_dim=16, attn_kv_heads=1)
    assert count_parameters(cfg) == sum(p.numel() for p in RecurrentLM(cfg).parameters())
    assert flops_per_token(cfg).attention_pair == 4 * cfg.attn_heads * cfg.attn_head_dim * 1
    # The constant per pair: the unmasked T x T products of the plain attention, counted.
    from baton.kernels.attention_ref import naive_attention

    T, H, Hk, D = 32, cfg.attn_heads, cfg.attn_kv_heads, cfg.attn_head_dim
    q, k, v = torch.randn(1, T, H, D), torch.randn(1, T, Hk, D), torch.randn(1, T, Hk, D)
    with FlopCounterMode(display=False) as counter:
        naive_attention(q, k, v)
    assert counter.get_total_flops() == flops_per_token(cfg).attention_pair * T * T
    bounds, offset = [0, 5, 12, 20], 7
    brute = sum(offset + t + 1 for t in range(5)) + sum(t + 1 for t in range(7)) + sum(t + 1 for t in range(8))
    assert causal_pairs(bounds, offset) == brute


def test_recurrence_flops_match_flop_counter_for_ssd_scan():
    from baton.kernels import chunk_ssd_ref

    cfg = ModelConfig(mixer="ssd", n_layers=1, chunk_size=16, conv_size=1)
    H, K, V = scan_shape(cfg)
    T = 64
    q, k = torch.randn(1, T, H, K), torch.randn(1, T, H, K)
    v, g = torch.randn(1, T, H, V), -torch.rand(1, T, H)
    with FlopCounterMode(display=False) as counter:
        chunk_ssd_ref(q, k, v, g, chunk_size=16)
    conv = 2 * cfg.conv_size * (cfg.ssd_inner + 2 * cfg.ssd_state_dim)
    assert counter.get_total_flops() == (flops_per_token(cfg).recurrence - conv) * T


def test_recurrence_flops_match_flop_counter_for_the_delta_rule():
    """The chunked delta rule's matmuls, counted; the triangular solve is not (the counter
    has no formula for it)."""
    from baton.kernels import chunk_delta_ref
    from baton.models.flops import delta_rule_flops

    cfg = ModelConfig(mixer="gdn", n_layers=1, chunk_size=16, gdn_head_dim=16)
    H, K, V = scan_shape(cfg)
    T = 64
    q, k, v = torch.randn(1, T, H, K), torch.randn(1, T, H, K), torch.randn(1, T, H, V)
    g, beta = -torch.rand(1, T, H), torch.rand(1, T, H)
    with FlopCounterMode(display=False) as counter:
        chunk_delta_ref(q, k, v, g, beta, chunk_size=16)
    assert counter.get_total_flops() == H * delta_rule_flops(16, K, V) * T
