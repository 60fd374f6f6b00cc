"""The trainer, top to bottom: setup, then one loop of plan -> forward -> backward -> step.

Every rank reads the same global batch (whole documents, rank-independent cursor), the
plan says which piece each rank holds, and the summed loss is divided by the global
number of targets, so the result equals one process training on the whole batch.

The life of a step (``file:function``):

1.  ``data/loader.py:PackedLoader.next_batch``: the next global batch of whole documents,
    packed, and its data cursor.
2.  ``parallel/planner.py:make_plan``: which spans of the packed stream each rank holds, and
    which ranks relay state to each other. (Hidden hop: both run one step *ahead*, on a worker
    thread, ``launch/batches.py:PlannedBatches``; this step's plan was made during the last.)
3.  ``parallel/plan.py:local_batch``: this rank's tokens, labels and document bounds.
4.  ``parallel/sequence.py:SequenceParallel.step``: the plan's chains, scoped to the step's
    forward and backward (``with sp.step(plan, local) as stats``), where the relay ops read
    them; the step's relay statistics come back from it. (Hidden hop: the model is called with
    tokens only; the open step is how the relay ops inside it know their neighbours.)
5.  ``models/lm.py:RecurrentLM.forward``: each block's mixer calls ``self.scan``. (Hidden
    hops: ``parallel/sequence.py:apply_sequence_parallel`` swapped that attribute for a
    ``RelayedScan`` when the model was parallelised, so the call site shows no relay; with
    ``train.activation_checkpoint`` a block's or mixer's ``forward`` was wrapped to run again
    in backward (``parallel/recompute.py``), and with ``train.micro_tokens`` each block's
    ``forward`` runs its piece in slices and relays for itself (``parallel/microbatch.py``).)
6.  ``parallel/sequence.py:RelayedScan``: the summary of the rank's last segment, the relay
    (``parallel/relay.py:RELAYS``: chain, all-gather or log-depth), the local chunked scan
    (``kernels/dispatch.py:chunk_gla`` / ``chunk_ssd``), the correction of the first segment.
7.  ``models/loss.py:fused_head_loss``: the final norm, head and cross-entropy over chunks of
    tokens (the logits never whole), summed over this rank's targets, divided here by the
    global target count.
8.  ``parallel/parallelize.py:ParallelModel.backward``: autograd, with the relay's functions
    sending state gradients back along the chains.
9.  ``ParallelModel.reduce_gradients``: the gradient all-reduce of replicated weights
    (``parallel/zero.py``; sharded engines reduce during backward) and the global loss.
10. ``ParallelModel.optimizer_step``: clip, check the norm is finite, step.
11. ``profile/recorder.py:RankProfiler.record``: this rank's phase times, tokens, relay bytes;
    every ``train.log_every`` steps ``end_interval`` gathers all ranks' records.
12. ``launch/batches.py:StepPlanner.calibrate``: the measured per-rank speeds become the cost
    model that plans the steps after.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from baton.checkpoint.export import initial_weights
from baton.checkpoint.state import Checkpointer, resume_point, saved_world_size
from baton.config import Config, to_yaml
from baton.data.loader import Batch
from baton.dist.env import DistEnv, init_distributed
from baton.dist.faults import KILL_AT_STEP, kill_if_asked, slow_down
from baton.kernels import kernel_backend
from baton.launch.batches import PlannedBatches, StepPlanner
from baton.launch.evaluate import held_out_losses
from baton.launch.logs import prepare_run_dir, tee_output
from baton.launch.metrics import MetricsLogger, StepResult
from baton.launch.preempt import Preemption
from baton.launch.run_tuning import RunTuning
from baton.launch.schedule import load_schedule_state, optimizer_factory, schedule_state
from baton.launch.setup import checkpoint_root, keep_compiled_code, pick_device, training_data, uses_triton
from baton.models.flops import causal_pairs, count_parameters, flops_per_token
from baton.models.lm import RecurrentLM
from baton.models.pararnn import residual_log
from baton.parallel.budget import memory_cap
from baton.parallel.parallelize import parallelize
from baton.parallel.plan import LocalBatch, local_batch
from baton.profile.gpu import peak_flops
from baton.profile.recorder import NullProfiler, RankProfiler
from baton.profile.trace import StepTracer


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite; the step did not reach the weights
    (DeepSpeed's norm is known only after its step) and nothing was saved after it."""

    def __init__(self, step: int, what: str, last_checkpoint: Path | None) -> None:
        saved = f"the newest checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
        super().__init__(
            f"step {step}: {what}; training stopped before the optimizer step and {saved}. "
            "Lower optim.lr or raise optim.warmup_steps (optim.grad_clip bounds each step), then resume=auto"
        )


class Trainer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.device, self.autocast_dtype = pick_device(cfg)
        self.env: DistEnv = init_distributed(self.device, cfg.dist.init_timeout_s, cfg.dist.timeout_s)
        self.run_dir = Path(cfg.train.run_dir)
        tee_output(self.run_dir / "logs" / f"rank{self.env.rank}.log")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.env.local_rank)
        keep_compiled_code(cfg, self.device, self.run_dir)
        self.tuning = RunTuning(self.run_dir, uses_triton(cfg, self.device), self.env.is_main)
        torch.manual_seed(cfg.train.seed)
        self.data = training_data(cfg)
        self.step = 0
        ckpt, root = cfg.checkpoint, checkpoint_root(cfg, self.run_dir)
        resume_from = resume_point(cfg.resume, root)
        universal = resume_from is not None and saved_world_size(resume_from) != self.env.world_size
        cap = memory_cap(cfg, self.env.world_size, self.device)  # refuses what cannot fit, before allocating
        model = RecurrentLM(cfg.model)
        if cfg.train.init_from and resume_from is None:  # a resumed run's weights are its checkpoint's
            initial_weights(model, Path(cfg.train.init_from))
        model = model.to(self.device)
        slow_down(model, self.env.rank, cfg.profile.slow_rank, cfg.profile.slow_seconds_per_ktoken)
        make_optimizer = optimizer_factory(cfg.optim, cfg.train.steps)
        self.parallel = parallelize(model, cfg, self.env, self.autocast_dtype, make_optimizer, universal)
        self.model, self.sp = self.parallel.model, self.parallel.sp
        self.checkpointer = Checkpointer(root, self.env, ckpt.keep, ckpt.async_save, ckpt.checksums, ckpt.every)
        self.planner = StepPlanner(cfg, self.env, peak_flops(self.device, cfg.profile.peak_tflops), cap)
        self.batches = PlannedBatches(self.data.loader(cfg.data.tokens_per_batch, cfg.train.seed), self.planner)
        self.preemption = Preemption(self.run_dir, self.env, cfg.train.deadline_margin_s)
        if resume_from is not None:
            self.restore(resume_from)
        prepare_run_dir(self.run_dir, self.env, self.step, to_yaml(cfg), self.device)
        self.profiler = self._build_profiler()
        self.tracer = StepTracer(
            cfg.profile.trace_ranks, cfg.profile.trace_steps, self.env.rank, self.device, self.run_dir
        )
        self.metrics: MetricsLogger | None = None

    def _build_profiler(self) -> RankProfiler | NullProfiler:
        p = self.cfg.profile
        if not p.enabled:
            return NullProfiler()
        flops = flops_per_token(self.cfg.model)
        return RankProfiler(self.run_dir, self.env, self.device, flops, p.peak_tflops, p.straggler_threshold)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def local_loss(self, batch: Batch, local: LocalBatch) -> torch.Tensor:
        """This rank's summed loss on its piece, divided by the global target count."""
        tokens, labels = local.tokens[None].to(self.device), local.labels[None].to(self.device)
        with self._autocast():
            loss_sum = self.model(tokens, local.cu_seqlens, labels, self.cfg.train.loss_chunk_tokens)
        return loss_sum / batch.n_targets

    def train_step(self) -> StepResult:
        self.model.train()
        prof = self.profiler
        with prof.phase("data"):
            batch, plan, plan_info = self.batches.next(self.planner.cost)
            local = local_batch(plan, self.env.rank, batch)
        with self.sp.step(plan, local) as stats:
            with prof.phase("forward"), residual_log() as residuals:
                loss = self.local_loss(batch, local)
            with prof.phase("backward"):
                self.parallel.backward(loss)
        with prof.phase("grad_comm"):
            total = self.parallel.reduce_gradients(loss)
        with prof.phase("optimizer"):
            grad_norm = self._optimizer_step(total)
        self.step += 1
        comm = stats.to_dict()
        pairs = causal_pairs(local.cu_seqlens.tolist(), local.first_offset)
        record = prof.record(self.step, local.tokens.numel(), comm, pairs) or {}
        plan_dict = plan.to_dict() | plan_info
        residual = self.newton_residuals(residuals)
        batch_pairs = causal_pairs(batch.cu_seqlens.tolist())
        return StepResult(
            total, grad_norm, batch.n_tokens, plan_dict, comm, batch.doc_ids, record.get("mfu"), residual, batch_pairs
        )

    def newton_residuals(self, found: list[torch.Tensor]) -> list[float] | None:
        """``‖h − f(h)‖ / ‖h‖`` of every Newton-trained layer in this step's forward, the
        largest over the ranks' pieces; None unless ``model.newton_residual``."""
        if not found:
            return None
        residuals = torch.stack(found).float()
        if self.env.distributed:
            dist.all_reduce(residuals, op=dist.ReduceOp.MAX)
        return residuals.tolist()

    def _optimizer_step(self, loss: float) -> float | None:
        """Clip (``optim.grad_clip``; 0: off) and step; the gradient norm before clipping.
        Every rank sees the same global loss and norm, so all stop together if one is not finite."""
        if not math.isfinite(loss):
            raise TrainingDiverged(self.step + 1, f"the loss is {loss}", self.checkpointer.newest())

        def check(norm: float | None) -> None:
            if norm is not None and not math.isfinite(norm):
                raise TrainingDiverged(self.step + 1, f"the gradient norm is {norm}", self.checkpointer.newest())

        return self.parallel.optimizer_step(self.cfg.optim.grad_clip, check)

    def save_checkpoint(self) -> None:
        extras = {
            "step": self.step,
            "loader": self.batches.cursor(),
            "scheduler": schedule_state(self.parallel.scheduler),
            "seconds_per_token": self.planner.cost.seconds_per_token,
            "speeds_measured": self.planner.cost.measured,
            "world_size": self.env.world_size,
            "engine": self.parallel.engine,
            "model": asdict(self.cfg.model),
        }
        p = self.parallel
        self.checkpointer.save(self.step, self.model, p.optimizer, extras, p.deepspeed)

    def restore(self, path: Path) -> None:
        p = self.parallel
        extras = self.checkpointer.load(path, self.model, p.optimizer, asdict(self.cfg.model), p.deepspeed)
        self.step = extras["step"]
        self.batches.loader.load_state_dict(extras["loader"])
        load_schedule_state(p.scheduler, extras["scheduler"])
        if extras["world_size"] == self.env.world_size:
            self.planner.cost.seconds_per_token = extras["seconds_per_token"]
            self.planner.cost.measured = extras.get("speeds_measured", False)
        if self.env.is_main:
            print(
                f"baton: resumed from {path} at step {self.step} "
                f"(saved on {extras['world_size']} ranks, now {self.env.world_size})",
                flush=True,
            )

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The held-out losses (``launch/evaluate.py:held_out_losses``), planned and relayed as
        training steps are."""
        self.model.eval()

        def loss_of(batch: Batch) -> torch.Tensor:
            plan = self.planner(batch, self.planner.cost)[0]
            local = local_batch(plan, self.env.rank, batch)
            with self.sp.step(plan, local):
                return self.local_loss(batch, local)

        return held_out_losses(self.data, self.cfg, loss_of, self.preemption.requested)

    def _end_interval(self) -> dict | None:
        """Every ``train.log_every`` steps: the profiler's summary across ranks, which also
        calibrates the cost model."""
        summary = self.profiler.end_interval()
        self.planner.calibrate(summary)
        return summary

    def fit(self) -> dict:
        """Train to ``train.steps`` (or ``train.stop_at_step``), with the run's kernel backend."""
        with kernel_backend(self.cfg.train.kernels):
            return self._fit()

    def _fit(self) -> dict:
        cfg, env = self.cfg, self.env
        if env.is_main:
            print(
                f"baton: {cfg.model.describe} model, {count_parameters(cfg.model) / 1e6:.2f}M parameters, "
                f"{env.world_size} rank(s), device {self.device}, {self.data.describe()}",
                flush=True,
            )
        last = min(cfg.train.steps, cfg.train.stop_at_step or cfg.train.steps)
        if self.step >= last:  # e.g. a requeued job whose run had already finished
            if env.is_main:
                print(f"baton: nothing to train: the run is at step {self.step} and ends at step {last}", flush=True)
            return {"steps": self.step}
        self.metrics = MetricsLogger(
            self.run_dir, cfg.train.steps, env.is_main, env.distributed, cfg.profile.tensorboard
        )
        first_step, start = self.step + 1, {}
        while self.step < last:
            kill_if_asked(KILL_AT_STEP, env.rank, self.step + 1)  # tests: a rank dying mid-job
            self.tracer.before_step(self.step + 1)
            began = time.perf_counter()
            result = self.train_step()
            self.tracer.after_step(self.step)
            if self.step == first_step:
                start = self.tuning.first_step(time.perf_counter() - began)
            at_end = self.step == last
            evaluation = self.evaluate() if self.step % cfg.train.eval_every == 0 or at_end else None
            logging = self.step % cfg.train.log_every == 0 or at_end
            interval = self._end_interval() if logging else None
            lr = self.parallel.scheduler.get_last_lr()[0]
            self.metrics.log_step(self.step, result, lr, evaluation, interval, logging)
            stop = self.preemption.requested() if not at_end else ""
            if stop or self.checkpointer.should_save(self.step, last):
                self.save_checkpoint()
                self.tuning.save()
            if stop:  # not finished: the requeued (or resumed) run writes the summary
                self.checkpointer.finish()
                self.metrics.note(self.step, f"stopping: {stop}; checkpoint of step {self.step} written")
                self.preemption.requeue()
                return {"steps": self.step, "stopped": stop}
        self.checkpointer.finish()
        n_params, flops = count_parameters(cfg.model), flops_per_token(cfg.model)
        return self.metrics.finish(self.step, n_params, flops, env.world_size, start)

    def close(self) -> None:
        """Release what this process holds (files, the planning thread), once, whether the run
        ended or failed. No collectives: after a failure the other ranks may be gone."""
        if self.metrics is not None:
            self.metrics.close()
        self.profiler.close()
        self.batches.close()
