"""``baton tune [config.yaml] [key=value ...]``: autotune the Triton kernels for a config's
shapes on this GPU ahead of a job, into the run directory's ``tuning.json``, which the
trainer loads at every start (``kernels/tuning_file.py``).

A kernel's tuning key is its shape constants (heads, head dims, chunk size, gate layout) and
dtypes, not the sequence length, and every layer has the same shapes: one block's forward
and backward over a short packed stream, at the run's dtype, meets every training kernel
once. It runs twice: once from a fresh start (the scans) and once continuing a document
(the relay's summary and correction kernels, which sequence parallelism and micro-batches
use).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch

from baton.config import Config, ConfigError
from baton.kernels import kernel_backend
from baton.kernels.tuning_file import FILE_NAME, count_choices, load_choices, save_choices, settings_timed
from baton.launch.setup import keep_compiled_code, pick_device, uses_triton
from baton.models.lm import Block
from baton.models.state import LayerState


def tune(cfg: Config) -> dict:
    """Tune (what the run directory's file does not hold yet) and save; what was done."""
    device, dtype = pick_device(cfg)
    if not uses_triton(cfg, device):
        raise ConfigError(
            f"baton tune: train.kernels={cfg.train.kernels} on {device.type} runs the PyTorch references, which "
            "have nothing to tune (a CUDA device, or train.kernels=triton under TRITON_INTERPRET=1)"
        )
    path = Path(cfg.train.run_dir) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    keep_compiled_code(cfg, device, path.parent)  # the job then loads the kernels' binaries too
    loaded, _ = load_choices(path)
    start = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    # one block of each recurrent mixer the model has (a hybrid's attention has no Triton tuning)
    blocks = [Block(cfg.model, name).to(device) for name in dict.fromkeys(cfg.model.layer_mixers) if name != "attn"]
    tokens = 4 * cfg.model.chunk_size
    cu = torch.tensor([0, tokens // 3, tokens])  # two documents, the first cut inside a chunk
    x = torch.randn(1, tokens, cfg.model.d_model, device=device, dtype=dtype or torch.float32, requires_grad=True)
    for block in blocks:
        with kernel_backend(cfg.train.kernels):
            with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
                fresh, state = block(x, cu, LayerState())
                continued, _ = block(x, cu, state)
            (fresh.float().square().sum() + continued.float().square().sum()).backward()
    return {
        "file": str(path),
        "loaded": loaded,
        "timed": settings_timed(),
        "choices": count_choices(),
        "saved": save_choices(path),
        "seconds": time.perf_counter() - start,
    }
