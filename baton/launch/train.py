"""The trainer, top to bottom: setup, then one loop of plan -> forward -> backward -> step.

Every rank reads the same global batch (whole documents, rank-independent cursor), the
plan says which piece each rank holds, and the summed loss is divided by the global
number of targets, so the result equals one process training on the whole batch.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from baton.checkpoint import latest_checkpoint
from baton.checkpoint.state import Checkpointer, saved_world_size
from baton.data.build import synthetic_corpus
from baton.data.corpus import Corpus
from baton.data.loader import Batch, PackedLoader
from baton.dist.env import DistEnv, init_distributed
from baton.kernels import set_backend as set_kernel_backend
from baton.kernels.common import TRITON_CHUNK_SIZES
from baton.launch.config import Config, ConfigError, to_yaml
from baton.launch.logs import drop_records_after, record_environment, tee_output
from baton.launch.preempt import Preemption
from baton.launch.progress import Progress
from baton.launch.schedule import build_optimizer, build_scheduler
from baton.models.flops import count_parameters, flops_per_token
from baton.models.lm import RecurrentLM, token_losses
from baton.parallel.plan import LocalBatch, StepPlan, fixed_degree_plan, local_batch
from baton.parallel.planner import CostModel, balanced_plan, concat_chunk_plan
from baton.parallel.sequence import SequenceParallel, apply_sequence_parallel
from baton.parallel.zero import apply_fsdp2, deepspeed_engine
from baton.profile.recorder import NullProfiler, RankProfiler


def open_corpus(cfg: Config) -> Corpus:
    if cfg.data.path == "synthetic":
        path = Path(cfg.data.cache_dir) / f"synthetic-n{cfg.data.synthetic_docs}-seed{cfg.train.seed}"
        corpus = synthetic_corpus(path, cfg.data.synthetic_docs, cfg.train.seed)
    else:
        corpus = Corpus(cfg.data.path)
    if corpus.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary of {corpus.path} "
            f"({corpus.vocab_size})"
        )
    if corpus.n_docs <= cfg.data.eval_docs:
        raise ConfigError(
            f"data.eval_docs={cfg.data.eval_docs} leaves no training documents in {corpus.path} "
            f"({corpus.n_docs} documents)"
        )
    return corpus


def document_split(cfg: Config, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out document ids: the last ``data.eval_docs`` documents are held out."""
    n_train = corpus.n_docs - cfg.data.eval_docs
    return np.arange(n_train), np.arange(n_train, corpus.n_docs)


def pick_device(cfg: Config) -> tuple[torch.device, torch.dtype | None]:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda") if cuda else torch.device("cpu")
    if cfg.train.kernels == "triton" and not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("train.kernels: triton needs a CUDA device (or TRITON_INTERPRET=1 to interpret on CPU)")
    triton = cfg.train.kernels == "triton" or (cfg.train.kernels == "auto" and cuda)
    if triton and cfg.model.chunk_size not in TRITON_CHUNK_SIZES:
        sizes = ", ".join(map(str, TRITON_CHUNK_SIZES))
        raise ConfigError(f"model.chunk_size: the Triton kernels need one of {sizes}, got {cfg.model.chunk_size}")
    bf16 = cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and cuda)
    return device, torch.bfloat16 if bf16 else None


KILL_AT_STEP = "BATON_TEST_KILL_AT_STEP"  # "RANK:STEP": that rank SIGKILLs itself (tests)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite; the step did not reach the weights
    (DeepSpeed's norm is known only after its step) and nothing was saved after it."""

    def __init__(self, step: int, what: str, last_checkpoint: Path | None) -> None:
        saved = f"the newest checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
        super().__init__(
            f"step {step}: {what}; training stopped before the optimizer step and {saved}. "
            "Lower optim.lr or raise optim.warmup_steps (optim.grad_clip bounds each step), then resume=auto"
        )


@dataclass
class StepResult:
    loss: float
    grad_norm: float | None  # before clipping; None where DeepSpeed does not compute it
    tokens: int
    plan: dict
    comm: dict
    doc_ids: list[int]


def resolve_resume(resume: str, root: Path) -> Path | None:
    """``none``: start fresh, which must not overwrite an earlier run's checkpoints; ``auto``:
    the newest complete checkpoint under ``root``, if any; otherwise a checkpoint directory,
    which must exist."""
    if resume == "none":
        newest = latest_checkpoint(root)
        if newest is not None:
            raise ConfigError(
                f"resume: none, but {root} holds an earlier run's checkpoints (newest: {newest.name}), which "
                "starting over would overwrite; resume=auto continues that run, and a new run needs another "
                "train.run_dir (or checkpoint.dir)"
            )
        return None
    if resume == "auto":
        return latest_checkpoint(root)
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"resume: {resume}: no such checkpoint directory")
    return path


class Trainer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.device, self.autocast_dtype = pick_device(cfg)
        self.env: DistEnv = init_distributed(self.device, cfg.dist.init_timeout_s, cfg.dist.timeout_s)
        self.run_dir = Path(cfg.train.run_dir)
        tee_output(self.run_dir / "logs" / f"rank{self.env.rank}.log")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.env.local_rank)
        set_kernel_backend(cfg.train.kernels)
        torch.manual_seed(cfg.train.seed)
        self.corpus = open_corpus(cfg)
        train_ids, self.eval_ids = document_split(cfg, self.corpus)
        self.loader = PackedLoader(self.corpus, cfg.data.tokens_per_batch, cfg.train.seed, train_ids)
        self.model = RecurrentLM(cfg.model).to(self.device)
        self.sp = SequenceParallel(self.env.rank, self.env.world_size, cfg.parallel.sp.relay)
        zero = cfg.parallel.zero
        # One process has nothing to shard with: it runs unsharded whatever the engine.
        self.engine = zero.engine if self.env.distributed else "none"
        if self.env.distributed:
            apply_sequence_parallel(self.model, self.sp)
            self._broadcast_parameters()
        if self.engine == "fsdp2":
            apply_fsdp2(self.model, zero.stage, self.autocast_dtype)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.train.steps, cfg.optim)
        self.step = 0
        ckpt = cfg.checkpoint
        root = Path(ckpt.dir) if ckpt.dir else self.run_dir / "checkpoints"
        resume_from = resolve_resume(cfg.resume, root)
        self.deepspeed = None
        if self.engine == "deepspeed":
            bf16 = self.autocast_dtype == torch.bfloat16
            universal = resume_from is not None and saved_world_size(resume_from) != self.env.world_size
            self.deepspeed = deepspeed_engine(
                self.model, self.optimizer, self.scheduler, zero.stage, cfg.optim.grad_clip, bf16, universal
            )
        self.checkpointer = Checkpointer(root, self.env, ckpt.keep, ckpt.async_save, ckpt.checksums)
        p = cfg.parallel.planner
        self.cost = CostModel(
            [1.0] * self.env.world_size,
            hop_seconds=p.hop_seconds,
            inter_node_hop_seconds=p.inter_node_hop_seconds,
            ranks_per_node=p.ranks_per_node,
        )
        self._planner_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-planner")
        self._ahead: Future | None = None
        self.preemption = Preemption(self.run_dir, self.env, cfg.train.deadline_margin_s)
        if resume_from is not None:
            self.restore(resume_from)
        if self.env.is_main:  # only once a resume has succeeded: a failed one changes nothing
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dropped = drop_records_after(self.run_dir, self.step)
            if dropped:
                print(f"baton: dropped {dropped} records of steps after {self.step} (an earlier attempt's)", flush=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
            record_environment(self.run_dir / "environment.jsonl", self.env, self.device)
        if self.env.distributed:
            dist.barrier()  # the records are trimmed before any rank appends to them
        if cfg.profile.enabled:
            self.profiler = RankProfiler(
                self.run_dir,
                self.env,
                self.device,
                flops_per_token(cfg.model).training,
                cfg.profile.peak_tflops,
                cfg.profile.straggler_threshold,
            )
        else:
            self.profiler = NullProfiler()

    def _broadcast_parameters(self) -> None:
        for p in self.model.parameters():
            dist.broadcast(p.data, 0)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _all_reduce_sum(self, values: list[float]) -> list[float]:
        if not self.env.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def _all_reduce_grads_and(self, loss: torch.Tensor) -> float:
        """Sum gradients over ranks, and the loss with them (one collective); the global loss.
        Sharded, the engine reduces the gradients itself: only the loss is left."""
        if not self.env.distributed:
            return loss.item()
        if self.engine != "none":
            return self._all_reduce_sum([loss.item()])[0]
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(grads[0].dtype)])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[-1].item()

    def make_plan(self, batch: Batch, cost: CostModel) -> tuple[StepPlan, dict]:
        """The step's plan and what the planner says of it. Every rank computes the same
        plan from the same inputs (the planners are deterministic)."""
        kind, bounds = self.cfg.parallel.planner.kind, batch.cu_seqlens.tolist()
        if kind == "fixed":
            plan = fixed_degree_plan(batch, self.env.world_size, self.cfg.parallel.sp.size)
            plan.validate(batch.n_tokens)
            return plan, {}
        if kind == "balanced":
            result = balanced_plan(bounds, cost, min_piece=max(4, self.cfg.model.conv_size))
        else:
            result = concat_chunk_plan(bounds, cost)
        return result.plan, {k: v for k, v in result.to_dict().items() if k != "plan"}

    def _next_batch_and_plan(self, cost: CostModel) -> tuple[Batch, StepPlan, dict, dict]:
        """The next batch, its plan, and the loader position that produces that batch (what a
        checkpoint stores: the batch loaded ahead has not been trained on)."""
        cursor = self.loader.state_dict()
        batch = self.loader.next_batch()
        return (batch, *self.make_plan(batch, cost), cursor)

    def enter_step(self, plan: StepPlan, batch: Batch) -> LocalBatch:
        local = local_batch(plan, self.env.rank, batch)
        self.sp.set_step(plan, local)
        return local

    def calibrate(self, summary: dict | None) -> None:
        """Feed the measured per-rank speed (rank 0's interval summary) to the cost model."""
        if self.cfg.parallel.planner.kind != "balanced" or not self.env.distributed:
            return
        speeds = torch.tensor(summary["tokens_per_s"] if summary else [0.0] * self.env.world_size, dtype=torch.float64)
        dist.broadcast(speeds, 0)
        if (speeds > 0).all():
            self.cost.seconds_per_token = (1.0 / speeds).tolist()

    def local_loss(self, batch, local: LocalBatch) -> torch.Tensor:
        """This rank's summed loss on its piece, divided by the global target count."""
        with self._autocast():
            logits = self.model(local.tokens[None].to(self.device), local.cu_seqlens)
        loss_sum, _ = token_losses(logits, local.labels[None].to(self.device))
        return loss_sum / batch.n_targets

    def _slow_down(self, tokens: int) -> None:
        """Testing aid: make one rank a straggler, in proportion to its load."""
        p = self.cfg.profile
        if p.slow_rank == self.env.rank and p.slow_seconds_per_ktoken > 0:
            time.sleep(p.slow_seconds_per_ktoken * tokens / 1000)

    def train_step(self) -> StepResult:
        self.model.train()
        prof = self.profiler
        with prof.phase("data"):
            # Load and plan one step ahead, on a worker thread, so that planning overlaps
            # this step's compute. The cost model is copied when the work is handed over:
            # the same point of the loop on every rank, so every rank plans alike.
            if self._ahead is None:
                self._ahead = self._planner_thread.submit(self._next_batch_and_plan, replace(self.cost))
            batch, plan, plan_info, _ = self._ahead.result()
            self._ahead = self._planner_thread.submit(self._next_batch_and_plan, replace(self.cost))
            local = self.enter_step(plan, batch)
        if os.environ.get(KILL_AT_STEP) == f"{self.env.rank}:{self.step + 1}":
            os.kill(os.getpid(), signal.SIGKILL)  # testing aid: a rank dying mid-job
        with prof.phase("forward"):
            loss = self.local_loss(batch, local)
            self._slow_down(local.tokens.numel())
        with prof.phase("backward"):
            if self.deepspeed is not None:  # DeepSpeed averages over ranks; we want the sum
                self.deepspeed.backward(loss * self.env.world_size)
            else:
                loss.backward()
        with prof.phase("grad_comm"):
            total = self._all_reduce_grads_and(loss)
        with prof.phase("optimizer"):
            grad_norm = self._optimizer_step(total)
        self.step += 1
        comm = self.sp.stats.to_dict()
        prof.record(self.step, local.tokens.numel(), comm)
        return StepResult(total, grad_norm, batch.n_tokens, plan.to_dict() | plan_info, comm, batch.doc_ids)

    def _optimizer_step(self, loss: float) -> float | None:
        """Clip (``optim.grad_clip``; 0: off) and step; the gradient norm before clipping.
        Every rank sees the same global loss and norm, so all stop together if one is not finite."""
        if not math.isfinite(loss):
            raise TrainingDiverged(self.step + 1, f"the loss is {loss}", self.checkpointer.newest())
        if self.deepspeed is not None:  # clips, steps optimizer and schedule, zeroes grads
            self.deepspeed.step()
            norm = self.deepspeed.get_global_grad_norm()
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip or math.inf)
            norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        norm = None if norm is None else float(norm)
        if norm is not None and not math.isfinite(norm):
            raise TrainingDiverged(self.step + 1, f"the gradient norm is {norm}", self.checkpointer.newest())
        if self.deepspeed is None:
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save_checkpoint(self) -> None:
        cursor = self._ahead.result()[3] if self._ahead is not None else self.loader.state_dict()
        sched = self.scheduler.state_dict()
        extras = {
            "step": self.step,
            "loader": cursor,
            "scheduler": {k: sched[k] for k in ("last_epoch", "_step_count", "_last_lr", "base_lrs")},
            "seconds_per_token": self.cost.seconds_per_token,
            "world_size": self.env.world_size,
            "engine": self.engine,
            "model": asdict(self.cfg.model),
        }
        self.checkpointer.save(self.step, self.model, self.optimizer, extras, self.deepspeed)

    def restore(self, path: Path) -> None:
        extras = self.checkpointer.load(path, self.model, self.optimizer, asdict(self.cfg.model), self.deepspeed)
        self.step = extras["step"]
        self.loader.load_state_dict(extras["loader"])
        self.scheduler.load_state_dict(
            {**extras["scheduler"], "lr_lambdas": [None] * len(extras["scheduler"]["base_lrs"])}
        )
        if extras["world_size"] == self.env.world_size:
            self.cost.seconds_per_token = extras["seconds_per_token"]
        if self.env.is_main:
            print(
                f"baton: resumed from {path} at step {self.step} "
                f"(saved on {extras['world_size']} ranks, now {self.env.world_size})",
                flush=True,
            )

    def _trace(self, starting: bool) -> None:
        """torch.profiler trace of steps trace_steps[0]..trace_steps[-1] on trace_ranks."""
        p = self.cfg.profile
        if not p.trace_steps or self.env.rank not in p.trace_ranks:
            return
        first, last = min(p.trace_steps), max(p.trace_steps)
        if starting and self.step + 1 == first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._tracer = torch.profiler.profile(activities=activities, record_shapes=True)
            self._tracer.__enter__()
        elif not starting and self.step == last and getattr(self, "_tracer", None):
            self._tracer.__exit__(None, None, None)
            path = self.run_dir / "profile" / f"trace_rank{self.env.rank}_steps{first}-{last}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._tracer.export_chrome_trace(str(path))
            self._tracer = None

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        loader = PackedLoader(self.corpus, self.cfg.data.tokens_per_batch, self.cfg.train.seed, self.eval_ids)
        loss_sum = targets = 0.0
        for _ in range(self.cfg.data.eval_batches):
            if self.preemption.requested():  # a long eval must not outlive the allocation
                break
            batch = loader.next_batch()
            loss = self.local_loss(batch, self.enter_step(self.make_plan(batch, self.cost)[0], batch))
            loss_sum += loss.item() * batch.n_targets
            targets += batch.n_targets
        (loss_sum,) = self._all_reduce_sum([loss_sum])
        return loss_sum / targets if targets else float("nan")

    def fit(self) -> dict:
        cfg, main = self.cfg, self.env.is_main
        n_params = count_parameters(cfg.model)
        flops_tok = flops_per_token(cfg.model).training
        if main:
            print(
                f"baton: {cfg.model.mixer} model, {n_params / 1e6:.2f}M parameters, {self.env.world_size} rank(s), "
                f"device {self.device}, corpus {self.corpus.path} "
                f"({self.corpus.n_docs} docs, {self.corpus.n_tokens} tokens)",
                flush=True,
            )
        last = min(cfg.train.steps, cfg.train.stop_at_step or cfg.train.steps)
        if self.step >= last:  # e.g. a requeued job whose run had already finished
            if main:
                print(f"baton: nothing to train: the run is at step {self.step} and ends at step {last}", flush=True)
            self.profiler.close()
            self._planner_thread.shutdown(wait=True)
            return {"steps": self.step}
        metrics = open(self.run_dir / "metrics.jsonl", "a") if main else None
        progress = Progress(cfg.train.steps, enabled=main)
        start, tokens, window_start, window_tokens = time.perf_counter(), 0, time.perf_counter(), 0
        first_loss = last_loss = eval_loss = None
        stop = ""
        while self.step < last:
            self._trace(starting=True)
            result = self.train_step()
            self._trace(starting=False)
            tokens += result.tokens
            window_tokens += result.tokens
            first_loss = result.loss if first_loss is None else first_loss
            last_loss = result.loss
            record = {
                "step": self.step,
                "loss": result.loss,
                "grad_norm": result.grad_norm,
                "lr": self.scheduler.get_last_lr()[0],
                "tokens": result.tokens,
                "plan": result.plan,
                "comm": result.comm,
                "doc_ids": result.doc_ids,
            }
            if self.step % cfg.train.eval_every == 0 or self.step == last:
                eval_loss = record["eval_loss"] = self.evaluate()
            if self.step % cfg.train.log_every == 0 or self.step == last:
                summary = self.profiler.end_interval()
                self.calibrate(summary)
                now = time.perf_counter()
                rate = window_tokens / (now - window_start)
                record["tokens_per_s"] = rate
                window_start, window_tokens = now, 0
                text = f"loss {result.loss:.4f}"
                if result.grad_norm is not None:
                    text += f" | grad norm {result.grad_norm:.2f}"
                text += f" | {rate / 1e3:.1f}k tok/s"
                if "eval_loss" in record:
                    text += f" | eval {record['eval_loss']:.4f}"
                if summary and self.env.distributed:
                    text += (
                        f" | rank compute min/med/max {summary['compute_s_min']:.2f}/"
                        f"{summary['compute_s_median']:.2f}/{summary['compute_s_max']:.2f}s "
                        f"(slowest {summary['slowest_rank']})"
                    )
                progress.update(self.step, text)
            if metrics:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
            every = cfg.checkpoint.every
            stop = self.preemption.requested() if self.step < last else ""
            if stop or (every and (self.step % every == 0 or self.step == last)):
                self.save_checkpoint()
            if stop:
                self.checkpointer.finish()
                progress.update(self.step, f"stopping: {stop}; checkpoint of step {self.step} written")
                self.preemption.requeue()
                break
        self.checkpointer.finish()
        progress.close()
        if metrics:
            metrics.close()
        self.profiler.close()
        self._planner_thread.shutdown(wait=True)
        if stop:  # not finished: the requeued (or resumed) run writes the summary
            return {"steps": self.step, "stopped": stop}
        elapsed = time.perf_counter() - start
        summary = {
            "steps": self.step,
            "first_loss": first_loss,
            "final_loss": last_loss,
            "eval_loss": eval_loss,
            "tokens": tokens,
            "seconds": elapsed,
            "tokens_per_s": tokens / elapsed,
            "model_flops_per_s": tokens * flops_tok / elapsed,
            "parameters": n_params,
            "world_size": self.env.world_size,
        }
        if main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            print(
                f"done: {self.step} steps, loss {first_loss:.4f} -> {last_loss:.4f}, eval {eval_loss:.4f}, "
                f"{tokens / elapsed / 1e3:.1f}k tok/s, {elapsed:.0f}s; run dir {self.run_dir}",
                flush=True,
            )
        return summary
