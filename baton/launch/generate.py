"""``baton generate RUN_DIR --prompt TEXT``: continue prompts with a trained model, recurrently
(``models/decode.py``): each prompt through the chunked scans, then one step per token."""

from __future__ import annotations

from pathlib import Path

import torch

from baton.checkpoint import CheckpointError, latest_checkpoint
from baton.checkpoint.export import load_model
from baton.config import Config, ConfigError, load_config
from baton.kernels import kernel_backend
from baton.launch.setup import checkpoint_root, pick_device, run_tokenizer
from baton.models.decode import generate
from baton.models.lm import RecurrentLM


def trained_model(
    run_dir: Path, checkpoint: str | None, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[Config, RecurrentLM, Path]:
    """The run's config (``overrides`` applied), its model with the weights of ``checkpoint``
    (default: the run's newest complete one) on the run's device, and that checkpoint."""
    cfg = load_config(str(Path(run_dir) / "config.yaml"), overrides)
    root = checkpoint_root(cfg, run_dir)
    path = Path(checkpoint) if checkpoint else latest_checkpoint(root)
    if path is None:
        raise CheckpointError(f"{root}: no complete checkpoint (train with checkpoint.every=N, or name --checkpoint)")
    device, _ = pick_device(cfg)
    return cfg, load_model(path).to(device).eval(), path


def generate_text(
    run_dir: Path,
    prompts: list[str],
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    checkpoint: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """Each prompt's continuation, up to ``max_tokens`` tokens or the end-of-document token."""
    cfg, model, _ = trained_model(run_dir, checkpoint, overrides)
    tokenizer = run_tokenizer(cfg)
    ids = [torch.as_tensor(tokenizer.encode(p), dtype=torch.long) for p in prompts]
    if any(len(p) == 0 for p in ids):
        raise ConfigError("--prompt: an empty prompt has nothing to continue from")
    with kernel_backend(cfg.train.kernels):
        out = generate(model, ids, max_tokens, temperature, top_p, seed, tokenizer.eos_id)
    return [tokenizer.decode(t for t in tokens if t != tokenizer.eos_id) for tokens in out.tokens]
