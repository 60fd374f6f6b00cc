"""State tracking: parity (or modular addition) learned on short sequences, tested on longer.

A small model reads random digits and predicts, at every digit, their running sum mod m so
far (``baton.data.synthetic.running_sums``): the state, never shown in the input. Trained on
sequences of ``--train-len`` digits at most, tested on sequences 4x the longest. Gated
DeltaNet with β in [0, 1] (transition eigenvalues in [0, 1]) and in [0, 2] (eigenvalues in
[-1, 1], Grazzi et al. 2024, arXiv 2411.12537), and GLA (positive diagonal transitions).
Accuracy: of every running sum in the test sequences, and of the last one (the sequence's
parity; chance is 1/m).

    python bench/state_tracking.py [--steps 2000] [--modulus 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from baton.config import ModelConfig  # noqa: E402
from baton.data.synthetic import running_sums  # noqa: E402
from baton.models.lm import RecurrentLM, token_losses  # noqa: E402

SHAPE = dict(d_model=64, n_layers=2, n_heads=2, gdn_head_dim=16, expand_k=0.5, chunk_size=32, mlp_ratio=2.0)
MODELS = {
    "gdn beta in [0, 2]": dict(mixer="gdn", allow_neg_eigval=True),
    "gdn beta in [0, 1]": dict(mixer="gdn", allow_neg_eigval=False),
    "gla": dict(mixer="gla"),
}


def packed(rng: np.random.Generator, lengths: list[int], modulus: int) -> tuple[torch.Tensor, ...]:
    tokens, labels = running_sums(rng, lengths, modulus)
    cu = torch.tensor([0, *np.cumsum(lengths)])
    return torch.from_numpy(tokens)[None], torch.from_numpy(labels)[None], cu


def train(cfg: ModelConfig, args: argparse.Namespace) -> tuple[RecurrentLM, float]:
    torch.manual_seed(args.seed)
    model = RecurrentLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    loss = float("nan")
    for step in range(args.steps):
        lengths = rng.integers(2, args.train_len + 1, size=args.batch).tolist()
        tokens, labels, cu = packed(rng, lengths, args.modulus)
        loss_sum, n = token_losses(model(tokens, cu), labels)
        opt.zero_grad()
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = (loss_sum / n).item()
        if step % 100 == 0:
            print(f"  step {step}: loss {loss:.4f}", file=sys.stderr, flush=True)
    return model, loss


@torch.no_grad()
def accuracy(model: RecurrentLM, length: int, n_seqs: int, modulus: int, seed: int) -> tuple[float, float]:
    """Over ``n_seqs`` sequences of ``length`` digits: every running sum, and the last ones."""
    tokens, labels, cu = packed(np.random.default_rng(seed), [length] * n_seqs, modulus)
    predicted = model(tokens, cu).argmax(-1)
    right = (predicted == labels).reshape(n_seqs, length)
    return right.float().mean().item(), right[:, -1].float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modulus", type=int, default=2, help="2: parity")
    parser.add_argument("--train-len", type=int, default=32, help="longest training sequence, in digits")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-seqs", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(2)

    rows = []
    for name, mixer in MODELS.items():
        print(f"{name}:", file=sys.stderr, flush=True)
        cfg = ModelConfig(vocab_size=args.modulus, tie_embeddings=False, **SHAPE, **mixer)
        start = time.perf_counter()
        model, loss = train(cfg, args)
        row = {"model": name, "final train loss": round(loss, 4), "train s": round(time.perf_counter() - start)}
        for factor in (1, 4):
            length = factor * args.train_len
            every, last = accuracy(model, length, args.test_seqs, args.modulus, args.seed + factor)
            row[f"acc @{length}"] = round(every, 4)
            row[f"last @{length}"] = round(last, 4)
        rows.append(row)
        print_table([row], list(row))
    print(f"\nmodulus {args.modulus}, trained on 2-{args.train_len} digits, {args.steps} steps of {args.batch}")
    print_table(rows, list(rows[0]))
    write_json("state_tracking", rows, args=vars(args), shape=SHAPE)


if __name__ == "__main__":
    main()
