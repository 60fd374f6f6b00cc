"""Recurrent decoding against re-running the full forward for every new token (CPU).

    python bench/generate.py [--lengths 1024 4096 16384 32768] [--new 16]

For each prompt length: tokens per second while generating ``--new`` tokens, recurrently
(``baton.models.decode``: the prompt through the chunked scans once, then one step per token
carrying each layer's fixed-size state) and by running the whole sequence again for each token
(what a model without a recurrent step, or an attention model without a KV cache, must do);
and the bytes decoding carries, against the KV cache an attention model of the same width
would hold (2 x layers x d_model values per token, bf16). GLA and SSD, d_model 256, 4 layers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from baton.config import ModelConfig  # noqa: E402
from baton.models.decode import stack_states, state_bytes  # noqa: E402
from baton.models.lm import RecurrentLM  # noqa: E402


def recurrent_rate(model: RecurrentLM, prompt: torch.Tensor, new: int) -> tuple[float, float, int]:
    """Prefill seconds, then tokens per second over ``new`` greedy recurrent steps (timed on
    their own), and the bytes of state decoding carries."""
    with torch.no_grad():
        start = time.perf_counter()
        logits, states = model.prefill(prompt[None])
        prefill = time.perf_counter() - start
        logits, states = logits[None], stack_states([states])
        start = time.perf_counter()
        for _ in range(new):
            logits, states = model.step(logits.argmax(-1), states)
        return prefill, new / (time.perf_counter() - start), state_bytes(states)


def full_forward_rate(model: RecurrentLM, prompt: torch.Tensor, new: int) -> float:
    """Tokens per second appending greedy tokens by running the whole sequence each time."""
    sequence = prompt.clone()
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(new):
            logits = model(sequence[None])[0, -1]
            sequence = torch.cat([sequence, logits.argmax()[None]])
    return new / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--new", type=int, default=16, help="tokens generated per measurement")
    args = parser.parse_args()
    rows = []
    for mixer in ("gla", "ssd"):
        torch.manual_seed(0)
        cfg = ModelConfig(mixer=mixer, d_model=256, n_layers=4, n_heads=4, vocab_size=257)
        model = RecurrentLM(cfg).eval()
        for T in args.lengths:
            prompt = torch.randint(0, 257, (T,))
            prefill, recurrent, carried = recurrent_rate(model, prompt, args.new)
            rerun = full_forward_rate(model, prompt, min(args.new, 4))
            rows.append(
                {
                    "mixer": mixer,
                    "prompt": T,
                    "prefill_s": round(prefill, 3),
                    "recurrent_tok_s": round(recurrent, 1),
                    "rerun_tok_s": round(rerun, 2),
                    "speedup": round(recurrent / rerun, 1),
                    "state_KiB": carried // 1024,
                    "kv_cache_KiB": 2 * cfg.n_layers * cfg.d_model * 2 * (T + args.new) // 1024,
                }  # fmt: skip
            )
            print_table(rows[-1:], list(rows[-1]))
    print()
    print_table(rows, list(rows[0]))
    write_json("generate", rows, new_tokens=args.new, model="d_model 256, 4 layers")


if __name__ == "__main__":
    main()
