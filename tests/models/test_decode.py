"""Recurrent decoding is exact: at every position its logits are the full forward's over the
prompt and what was generated, and what it carries does not grow with the length (a
hybrid's attention layers: a cache of keys and values, which does)."""

import pytest
import torch

from baton.models.decode import generate, sample
from baton.models.lm import RecurrentLM
from tests.helpers import tiny_model


def model(mixer: str) -> RecurrentLM:
    return tiny_model(mixer).eval()


@pytest.mark.parametrize("mixer", ["gla", "ssd", "gdn", "gdn-neg", "paragru", "paralstm", "gdn+attn", "ssd+attn"])
def test_decoding_logits_equal_the_full_forward(mixer):
    """Three prompts of different lengths (one token; under a chunk; over two, so the short
    conv's window comes from the scan), decoded together: fp32, 1e-5 relative (the
    recurrence and the chunked scan sum in other orders, ~1e-7)."""
    lm = model(mixer)
    gen_ = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 257, (n,), generator=gen_) for n in (1, 9, 40)]
    out = generate(lm, prompts, max_tokens=20, temperature=1.0, top_p=0.9, seed=3, keep_logits=True)
    for i, prompt in enumerate(prompts):
        sequence = torch.cat([prompt, torch.tensor(out.tokens[i][:-1])])
        with torch.no_grad():
            full = lm(sequence[None])[0]
        for s, logits in enumerate(out.logits):
            expected = full[len(prompt) - 1 + s]
            assert ((logits[i] - expected).norm() / expected.norm()).item() < 1e-5, (i, s)
    if "attn" not in mixer:
        assert len(set(out.state_bytes)) == 1 and out.state_bytes[0] > 0  # constant, whatever the length
        return
    # The cache grows by one token's keys and values per step (fp32; prompts padded to the longest).
    lm_cfg = lm.cfg
    per_token = len(prompts) * lm_cfg.attn_kv_heads * 2 * lm_cfg.attn_head_dim * 4 * lm_cfg.layer_mixers.count("attn")
    assert all(b - a == per_token for a, b in zip(out.state_bytes[:-1], out.state_bytes[1:]))


def test_sampling():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.9]])
    assert sample(logits, 0.0, 1.0, None).item() == 1  # greedy
    gen = torch.Generator().manual_seed(0)
    # The probabilities are 0.518, 0.469, 0.010 and 0.004 (tokens 1, 3, 2, 0): the smallest set
    # reaching 0.5 of the mass is token 1, reaching 0.9 tokens 1 and 3.
    assert {sample(logits, 1.0, 0.5, gen).item() for _ in range(100)} == {1}
    assert {sample(logits, 1.0, 0.9, gen).item() for _ in range(200)} == {1, 3}
