"""Consolidate a sharded checkpoint into one ``model.safetensors`` plus ``config.json``,
for inference or fine-tuning elsewhere (no pickle, no optimizer state)."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch import Tensor

from baton.checkpoint.store import DEEPSPEED_TAG, CheckpointError, verify
from baton.config import ModelConfig
from baton.models.lm import RecurrentLM


def load_model_state(path: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The full (unsharded) model weights of a checkpoint, in this single process."""
    verify(path)
    extras = json.loads((path / "trainer.json").read_text())
    config = ModelConfig(**extras["model"])
    state = RecurrentLM(config).state_dict()
    if (path / DEEPSPEED_TAG).is_dir():  # files already checked to be plain data by verify()
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        full = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DEEPSPEED_TAG)
        return config, {k: full[k] if k in full else full[_tied_source(k, full)] for k in state}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"model": state}, checkpoint_id=path / "model")
    except Exception as exc:  # noqa: BLE001 - reported with the checkpoint's name
        raise CheckpointError(f"{path / 'model'}: could not be read ({type(exc).__name__}: {exc})") from None
    return config, state


def load_model(path: Path) -> RecurrentLM:
    """A checkpoint's model, whole, in this single process (on the CPU)."""
    config, state = load_model_state(path)
    model = RecurrentLM(config)
    model.load_state_dict(state)
    return model


def _tied_source(name: str, full: dict) -> str:
    """DeepSpeed stores a tied weight once: the LM head is the embedding."""
    if name == "lm_head.weight" and "embed.weight" in full:
        return "embed.weight"
    raise CheckpointError(f"parameter {name} is missing from the DeepSpeed checkpoint")


def load_exported(directory: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The model config and weights of a directory ``baton export`` or ``baton import`` wrote."""
    from safetensors.torch import load_file

    config, weights = directory / "config.json", directory / "model.safetensors"
    for path in (config, weights):
        if not path.is_file():
            raise CheckpointError(f"{path}: not found (a directory of `baton export` or `baton import` has it)")
    return ModelConfig(**json.loads(config.read_text())["model"]), load_file(str(weights))


def initial_weights(model: RecurrentLM, directory: Path) -> None:
    """Load ``train.init_from``'s weights into ``model``, whose config must be the directory's."""
    cfg, state = load_exported(directory)
    ours, theirs = asdict(model.cfg), asdict(cfg)
    differ = [f"model.{k}={theirs[k]!r}" for k in ours if ours[k] != theirs[k]]
    if differ:
        raise CheckpointError(
            f"train.init_from={directory}: its model has {', '.join(differ)}; set those (its config.yaml has them)"
        )
    model.load_state_dict(state)


def export_safetensors(path: Path, out_dir: Path) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json``; return the former."""
    try:  # the `export` extra; loading the weights needs none
        from safetensors.torch import save_file
    except ImportError:
        raise CheckpointError("exporting needs safetensors: pip install safetensors (or baton[export])") from None

    config, state = load_model_state(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.safetensors"
    # Tied weights share storage, which safetensors refuses: each tensor gets its own copy.
    save_file(
        {k: v.detach().clone().contiguous() for k, v in state.items()}, str(target), metadata={"source": str(path)}
    )
    meta = {
        "model": asdict(config),
        "step": json.loads((path / "trainer.json").read_text())["step"],
    }
    (out_dir / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
    return target
