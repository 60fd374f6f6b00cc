"""What a run reports, from rank 0: ``metrics.jsonl`` (one record per step), the console
progress line at logging steps, ``summary.json`` with the closing line when the run ends, and
with ``profile.tensorboard`` the same numbers as TensorBoard scalars in ``tensorboard/``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from baton.models.flops import FlopsPerToken
from baton.progress import Progress


@dataclass
class StepResult:
    """One training step's outcome, as the log records it."""

    loss: float
    grad_norm: float | None  # before clipping; None where DeepSpeed does not compute it
    tokens: int
    plan: dict
    comm: dict
    doc_ids: list
    mfu: float | None = None  # this rank's, where the device's peak is known
    newton_residual: list[float] | None = None  # per layer, the largest over ranks (model.newton_residual)
    attention_pairs: int = 0  # (query, key) pairs a hybrid's attention scored in the batch, per layer


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, enabled: bool, distributed: bool, tensorboard: bool = False):
        self.run_dir, self.enabled, self.distributed = Path(run_dir), enabled, distributed
        self._board = _board(self.run_dir / "tensorboard") if enabled and tensorboard else None
        self._file, self._closed = None, False
        self.progress = Progress(total_steps, enabled=enabled)
        self.start = self.window_start = time.perf_counter()
        self.tokens = self.window_tokens = 0
        self.attention_pairs = 0
        self.first_loss = self.last_loss = self.eval_loss = None

    def log_step(
        self, step: int, result: StepResult, lr: float, evaluation: dict | None, interval: dict | None, log_line: bool
    ) -> None:
        """Record step ``step`` (a :class:`StepResult`) and its
        ``evaluation`` (``eval_loss``, ...) where there is one; at logging steps (``log_line``)
        also the tokens per second of the interval and the console line, with the profiler's
        cross-rank ``interval`` summary where there is one."""
        self.tokens += result.tokens
        self.attention_pairs += result.attention_pairs
        self.window_tokens += result.tokens
        self.first_loss = result.loss if self.first_loss is None else self.first_loss
        self.last_loss = result.loss
        record = {
            "step": step,
            "loss": result.loss,
            "grad_norm": result.grad_norm,
            "lr": lr,
            "tokens": result.tokens,
            "plan": result.plan,
            "comm": result.comm,
            "doc_ids": result.doc_ids,
        }
        if result.newton_residual is not None:
            record["newton_residual"] = result.newton_residual
        if evaluation is not None:
            record |= evaluation
            self.eval_loss = evaluation["eval_loss"]
        if log_line:
            now = time.perf_counter()
            record["tokens_per_s"] = self.window_tokens / (now - self.window_start)
            self.window_start, self.window_tokens = now, 0
            self.progress.update(step, self._line(record, interval))
        if self.enabled:
            if self._file is None:
                self._file = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed by close()
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._board is not None:
            self._write_scalars(step, record, result.mfu, interval)

    def _write_scalars(self, step: int, record: dict, mfu: float | None, interval: dict | None) -> None:
        scalars = {k: record.get(k) for k in ("loss", "grad_norm", "lr", "eval_loss", "tokens_per_s")}
        scalars |= {f"eval_loss/{name}": v for name, v in record.get("eval_loss_by_source", {}).items()}
        scalars["mfu"] = mfu
        if interval:
            scalars |= {f"rank_compute_s/{k}": interval[f"compute_s_{k}"] for k in ("min", "median", "max")}
        for name, value in scalars.items():
            if value is not None:
                self._board.add_scalar(name, value, step)
        self._board.flush()

    def _line(self, record: dict, interval: dict | None) -> str:
        text = f"loss {record['loss']:.4f}"
        if record["grad_norm"] is not None:
            text += f" | grad norm {record['grad_norm']:.2f}"
        text += f" | {record['tokens_per_s'] / 1e3:.1f}k tok/s"
        if "eval_loss" in record:
            text += f" | eval {record['eval_loss']:.4f}"
        if "newton_residual" in record:
            text += f" | newton residual {max(record['newton_residual']):.1e}"
        if interval and self.distributed:
            text += (
                f" | rank compute min/med/max {interval['compute_s_min']:.2f}/"
                f"{interval['compute_s_median']:.2f}/{interval['compute_s_max']:.2f}s "
                f"(slowest {interval['slowest_rank']})"
            )
        return text

    def note(self, step: int, text: str) -> None:
        self.progress.update(step, text)

    def finish(
        self, steps: int, parameters: int, flops: FlopsPerToken, world_size: int, start: dict | None = None
    ) -> dict:
        """The run's summary, written to ``summary.json`` with a closing line; ``start``: what
        this start of the run cost before training (first step, kernel tuning)."""
        elapsed = time.perf_counter() - self.start
        summary = {
            "steps": steps,
            "first_loss": self.first_loss,
            "final_loss": self.last_loss,
            "eval_loss": self.eval_loss,
            "tokens": self.tokens,
            "seconds": elapsed,
            "tokens_per_s": self.tokens / elapsed,
            "model_flops_per_s": flops.training_step(self.tokens, self.attention_pairs) / elapsed,
            "parameters": parameters,
            "world_size": world_size,
            **(start or {}),
        }
        self.close()
        if self.enabled:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            print(
                f"done: {steps} steps, loss {self.first_loss:.4f} -> {self.last_loss:.4f}, eval {self.eval_loss:.4f}, "
                f"{self.tokens / elapsed / 1e3:.1f}k tok/s, {elapsed:.0f}s; run dir {self.run_dir}",
                flush=True,
            )
        return summary

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
        if self._board is not None:
            self._board.close()
        self.progress.close()


def _board(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from baton.config import ConfigError

        raise ConfigError("profile.tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(path))
