"""Recurrent generation: each prompt through the chunked scans once (its final states out), then
one recurrent step per token for all prompts together. What is carried is each recurrent
layer's fixed-size state (and the conv's window): decoding costs the same per token at any
length; a hybrid's attention layers carry a cache of keys and values that grows with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from baton.models.lm import RecurrentLM
from baton.models.state import LayerState


def stack_states(per_prompt: list[list[LayerState]]) -> list[LayerState]:
    """Prompts' states (each of batch 1, per layer) as one batch per layer."""
    stacked = []
    for layer in zip(*per_prompt):
        if layer[0].kv is not None:  # attention: the caches padded to the longest, with their lengths
            lengths = torch.tensor([s.kv.shape[1] for s in layer], device=layer[0].kv.device)
            longest = int(lengths.max())
            kv = torch.cat([F.pad(s.kv, (0, 0, 0, 0, 0, longest - s.kv.shape[1])) for s in layer])
            stacked.append(LayerState(kv=kv, lengths=lengths))
            continue
        conv = None if layer[0].conv is None else torch.cat([s.conv for s in layer])
        stacked.append(LayerState(torch.stack([s.scan for s in layer]), conv))
    return stacked


def state_bytes(states: list[LayerState]) -> int:
    """Bytes of what decoding carries."""
    return sum(t.numel() * t.element_size() for s in states for t in (s.scan, s.conv, s.kv) if t is not None)


def sample(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Token ids [B] from logits [B, V]: greedy at temperature 0, else sampled from the
    smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # tokens after the nucleus is full
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return order.gather(-1, choice)[:, 0]


@dataclass
class Generation:
    tokens: list[list[int]]  # per prompt, the generated ids (up to and including an end token)
    logits: list[Tensor] = field(default_factory=list)  # per step [B, V], when asked for
    state_bytes: list[int] = field(default_factory=list)  # what decoding carried, per step


@torch.no_grad()
def generate(
    model: RecurrentLM,
    prompts: list[Tensor],
    max_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
    keep_logits: bool = False,
) -> Generation:
    """Continue each prompt (token ids [T_i]) by up to ``max_tokens`` tokens, stopping a prompt
    at ``eos_id``."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    prefilled = [model.prefill(p.to(device)[None]) for p in prompts]
    logits, states = torch.stack([lg for lg, _ in prefilled]), stack_states([s for _, s in prefilled])
    out = Generation([[] for _ in prompts])
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for _ in range(max_tokens):
        if keep_logits:
            out.logits.append(logits)
        tokens = sample(logits, temperature, top_p, generator)
        for i, t in enumerate(tokens.tolist()):
            if not done[i]:
                out.tokens[i].append(t)
        done |= tokens == eos_id if eos_id is not None else torch.zeros_like(done)
        if done.all():
            break
        logits, states = model.step(tokens, states)
        out.state_bytes.append(state_bytes(states))
    return out
