"""Activation memory per token: measured exactly, next to the memory model's prediction.

    python bench/memory.py [--triton]

For the 125m and 1b shapes (GLA), each checkpointing policy, with and without the fused loss:
the bytes a forward keeps for backward per token per layer and for the head and loss, counted
exactly (``baton/profile/activations.py``: storages created in forward and alive when backward
starts, which also sees what checkpointing holds by reference, where ``saved_tensors_hooks``
cannot) on the reference path in bf16 autocast, next to ``baton memory``'s formulas
(``baton/models/memory.py``). Per token is the difference between two lengths of one document
(constants such as autocast's cached weights cancel); per layer is one block, its input
counted, its output (the next block's input) not; head and loss are a one-layer model's total
less its block. ``--triton`` adds both mixers on the Triton path under TRITON_INTERPRET=1 at a
small shape (d_model 128; minutes). Each policy's work recomputed in backward is the share of a
training step's FLOPs (``baton/models/flops.py``) its recomputation adds, and ``cpu_step_ms``
a one-block forward and backward on this machine's CPU (4096 tokens, the 125m width).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

SHAPES = {  # the presets' shapes (configs/125m.yaml, configs/1b.yaml) and a small one for the interpreter
    "125m": dict(d_model=768, n_layers=12, n_heads=4, vocab_size=32000),
    "1b": dict(d_model=2048, n_layers=24, n_heads=4, vocab_size=32000, tie_embeddings=False),
    "small": dict(d_model=128, n_layers=2, n_heads=2, vocab_size=1000, ssd_head_dim=64, ssd_state_dim=64),
}
POLICIES = ("none", "full", "mixer")


def model_with(cfg, policy: str):
    import torch

    from baton.models.lm import RecurrentLM
    from baton.parallel.recompute import apply_activation_checkpointing
    from baton.parallel.relay import RelayRecord

    torch.manual_seed(0)
    model = RecurrentLM(cfg)
    apply_activation_checkpointing(model, policy, RelayRecord())
    return model


def block_kept(cfg, policy: str, T: int) -> int:
    import torch

    from baton.profile.activations import ActivationMeter, release_interpreter_arguments

    model = model_with(cfg, policy)
    cu = torch.tensor([0, T])
    with torch.autocast("cpu", dtype=torch.bfloat16), ActivationMeter() as meter:
        x = torch.randn(1, T, cfg.d_model, dtype=torch.bfloat16, requires_grad=True)
        y, _ = model.blocks[0](x, cu)
    release_interpreter_arguments() if os.environ.get("TRITON_INTERPRET") == "1" else None
    return meter.alive_bytes(exclude=[*model.parameters(), cu, y])


def model_kept(cfg, policy: str, T: int, fused: bool) -> int:
    import torch

    from baton.profile.activations import kept_for_backward

    model = model_with(cfg, policy)
    tokens = torch.randint(0, cfg.vocab_size, (1, T))
    return kept_for_backward(model, tokens, torch.tensor([0, T]), tokens, 64 if fused else 0, torch.bfloat16)


def recomputed_share(cfg, policy: str) -> float:
    """FLOPs a policy recomputes, as a share of a training step's (forward + backward)."""
    from baton.models.flops import flops_per_token, mixer_linear_params, scan_shape

    if policy == "none":
        return 0.0
    total = flops_per_token(cfg)
    blocks = total.forward - 2 * cfg.d_model * cfg.vocab_size  # the head is never recomputed
    if policy == "full":
        return blocks / total.training
    H, K, V = scan_shape(cfg)
    mixer = 2 * mixer_linear_params(cfg) + H * (2 * cfg.chunk_size * (K + V) + 4 * K * V)
    return cfg.n_layers * mixer / total.training


def cpu_step_ms(cfg, policy: str, T: int = 4096) -> float:
    import torch

    model = model_with(cfg, policy)
    x = torch.randn(1, T, cfg.d_model, requires_grad=True)
    cu = torch.tensor([0, T])
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.blocks[0](x, cu)[0].square().mean().backward()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[1]


def rows_for(name: str, mixer: str, path: str, lengths: tuple[int, int], timed: bool) -> list[dict]:
    from baton.config import ModelConfig
    from baton.models.memory import activation_bytes

    full = ModelConfig(mixer=mixer, chunk_size=64, **SHAPES[name])
    cfg = replace(full, n_layers=1)  # measured on one block
    T1, T2 = lengths
    rows = []
    for policy in POLICIES:
        layer = (block_kept(cfg, policy, T2) - block_kept(cfg, policy, T1)) / (T2 - T1)
        ms = cpu_step_ms(cfg, policy) if timed else None
        for fused in (True, False):
            model = (model_kept(cfg, policy, T2, fused) - model_kept(cfg, policy, T1, fused)) / (T2 - T1)
            predicted = activation_bytes(cfg, policy, 2, path, fused)
            rows.append(
                {
                    "shape": name,
                    "mixer": mixer,
                    "path": path,
                    "policy": policy,
                    "loss": "fused" if fused else "plain",
                    "layer_B": layer,
                    "layer_pred": predicted.per_layer,
                    "layer_err": f"{abs(layer - predicted.per_layer) / predicted.per_layer:.1%}",
                    "layer_per_d": round(layer / cfg.d_model, 2),
                    "head_B": model - layer,
                    "head_pred": predicted.head_loss,
                    "head_err": f"{abs(model - layer - predicted.head_loss) / predicted.head_loss:.1%}",
                    "recomputed": f"{recomputed_share(full, policy):.0%}",
                    "cpu_step_ms": None if ms is None else round(ms),
                }  # fmt: skip
            )
            print_table(rows[-1:], list(rows[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triton", action="store_true", help="also the Triton path, interpreted (small shape)")
    args = parser.parse_args()
    if args.triton:
        os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are defined: before importing baton
    from baton.kernels import kernel_backend

    with kernel_backend("torch"):
        rows = rows_for("125m", "gla", "reference", (256, 512), timed=True)
        rows += rows_for("1b", "gla", "reference", (256, 512), timed=False)
    if args.triton:
        with kernel_backend("triton"):
            for mixer in ("gla", "ssd"):
                rows += rows_for("small", mixer, "triton", (128, 256), timed=False)
    print()
    print_table(rows, list(rows[0]))
    write_json("memory", rows, shapes=SHAPES, dtype="bf16 autocast")


if __name__ == "__main__":
    main()
