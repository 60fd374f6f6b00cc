"""``baton replay RUN_DIR --step N``: recompute one logged training step in this single
process and compare it with what the run logged.

The weights come from the run's checkpoint of step N-1 (for step 1, the seeded initial
weights) and the batch from that checkpoint's data cursor, so the documents are the ones
step N trained on (checked against the log). The run's ranks, plan, relay and sharding do
not enter: an exact run logs what one process computes on the whole batch, up to the
round-off of other summation orders (and of bf16, where the run used it and the replay
does not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from baton.checkpoint import CheckpointError, complete_checkpoints
from baton.checkpoint.export import initial_weights, load_model
from baton.checkpoint.store import checkpoint_step, final_dir
from baton.config import ConfigError, load_config
from baton.kernels import kernel_backend
from baton.launch.setup import checkpoint_root, pick_device, training_data
from baton.models.lm import RecurrentLM


@dataclass
class Replay:
    step: int
    world_size: int  # of the run at that step
    logged_loss: float
    loss: float
    logged_grad_norm: float | None  # None where the run's engine did not report it
    grad_norm: float
    device: str
    dtype: str

    def table(self) -> str:
        rows = [("loss", self.logged_loss, self.loss), ("grad norm", self.logged_grad_norm, self.grad_norm)]
        lines = [f"{'':10} {'logged':>14} {'replayed':>14} {'rel. diff':>10}"]
        for name, logged, ours in rows:
            if logged is None:
                lines.append(f"{name:10} {'-':>14} {ours:14.8g} {'-':>10}")
            else:
                lines.append(f"{name:10} {logged:14.8g} {ours:14.8g} {relative(ours, logged):10.2e}")
        return "\n".join(lines)


def relative(value: float, reference: float) -> float:
    return abs(value - reference) / max(abs(reference), 1e-30)


def _logged(run_dir: Path, step: int) -> dict:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path}: not found (is {run_dir} a run directory?)")
    records = {r["step"]: r for r in map(json.loads, filter(str.strip, path.read_text().splitlines()))}
    if step not in records:
        held = f"steps {min(records)}..{max(records)}" if records else "none"
        raise ConfigError(f"{path}: no record of step {step} (it has {held})")
    return records[step]


def _weights_and_position(cfg, run_dir: Path, step: int) -> tuple[RecurrentLM, dict | None]:
    """The weights step ``step`` started from, and the loader's position before its batch
    (None: the start)."""
    if step == 1:
        torch.manual_seed(cfg.train.seed)  # as the trainer does before it builds the model
        model = RecurrentLM(cfg.model)
        if cfg.train.init_from:
            initial_weights(model, Path(cfg.train.init_from))
        return model, None
    root = checkpoint_root(cfg, run_dir)
    done, before = complete_checkpoints(root), final_dir(root, step - 1)
    if before not in done:
        raise CheckpointError(
            f"{root}: no complete checkpoint of step {step - 1}, which replaying step {step} starts from "
            f"(checkpoints of steps: {[checkpoint_step(p) for p in done] or 'none'}; step 1 needs none)"
        )
    return load_model(before), json.loads((before / "trainer.json").read_text())["loader"]


def replay_step(run_dir: Path, step: int, overrides: list[str] | tuple[str, ...] = ()) -> Replay:
    """Recompute step ``step`` of the run in ``run_dir``; ``overrides`` apply to its config
    (meant for ``train.device``, ``train.dtype``, ``train.kernels``)."""
    cfg = load_config(str(run_dir / "config.yaml"), overrides)
    record = _logged(run_dir, step)
    device, autocast_dtype = pick_device(cfg)
    model, position = _weights_and_position(cfg, run_dir, step)
    model = model.to(device)
    data = training_data(cfg)
    loader = data.loader(cfg.data.tokens_per_batch, cfg.train.seed)
    if position is not None:
        loader.load_state_dict(position)
    batch = loader.next_batch()
    if batch.doc_ids != record["doc_ids"]:
        raise ConfigError(
            f"the data position of step {step} gives other documents than the run logged: has the {data.describe()} "
            "or data.tokens_per_batch changed since?"
        )
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with kernel_backend(cfg.train.kernels):
        with autocast:
            tokens, labels = batch.tokens[None].to(device), batch.labels[None].to(device)
            loss_sum = model(tokens, batch.cu_seqlens, labels, cfg.train.loss_chunk_tokens)
        loss = loss_sum / batch.n_targets
        loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    return Replay(
        step=step,
        world_size=len(record["plan"]["pieces"]),
        logged_loss=record["loss"],
        loss=loss.item(),
        logged_grad_norm=record.get("grad_norm"),
        grad_norm=grad_norm.item(),
        device=str(device),
        dtype=str(autocast_dtype or torch.float32).removeprefix("torch."),
    )
