"""Saving and restoring a training state: model and optimizer through
torch.distributed.checkpoint (each rank writes its own shard; loading reshards to the
current ranks), the rest (step, data cursor, scheduler, planner, config) as JSON, and each
rank's RNG state as a tensor file read with ``weights_only=True``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from baton.checkpoint.store import (
    DEEPSPEED_TAG,
    CheckpointError,
    checkpoint_files,
    commit,
    hash_share,
    latest_checkpoint,
    partial_dir,
    prune,
    remove_partials,
    verify,
)
from baton.dist.env import DistEnv
from baton.dist.faults import KILL_IN_SAVE, kill_if_asked

# Every single-process save and load says it assumes a single process; here that is the case.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def resume_point(resume: str, root: Path) -> Path | None:
    """The checkpoint a run starts from (``resume``). ``none``: start fresh, which must not
    overwrite an earlier run's checkpoints under ``root``; ``auto``: the newest complete one,
    if any; otherwise a checkpoint directory, which must exist."""
    if resume == "none":
        newest = latest_checkpoint(root)
        if newest is not None:
            raise CheckpointError(
                f"resume: none, but {root} holds an earlier run's checkpoints (newest: {newest.name}), which "
                "starting over would overwrite; resume=auto continues that run, and a new run needs another "
                "train.run_dir (or checkpoint.dir)"
            )
        return None
    if resume == "auto":
        return latest_checkpoint(root)
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"resume: {resume}: no such checkpoint directory")
    return path


class Checkpointer:
    """Saves every ``every`` steps and at the last one (0: never), keeps the newest ``keep``."""

    def __init__(
        self, root: Path, env: DistEnv, keep: int, async_save: bool, checksums: bool = True, every: int = 0
    ) -> None:
        self.root, self.env, self.keep, self.async_save = root, env, keep, async_save
        self.checksums, self.every = checksums, every
        self._pending: tuple | None = None  # (future or None, partial dir, step)
        # Async writes coordinate in a background thread: on a group of their own, so that
        # they never interleave with the training loop's collectives.
        self._group = dist.new_group(backend="gloo") if async_save and env.distributed else None
        if env.is_main:
            remove_partials(root)
        self._barrier()

    def _barrier(self) -> None:
        if self.env.distributed:
            dist.barrier()

    def should_save(self, step: int, last: int) -> bool:
        """Whether step ``step`` (of a run ending at ``last``) is one to checkpoint."""
        return bool(self.every) and (step % self.every == 0 or step == last)

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extras: dict, ds=None) -> None:
        """Write this rank's shard of step ``step``; committed now, or (async) at the next
        save or :meth:`finish`. With a DeepSpeed engine ``ds``, in DeepSpeed's own format
        (written synchronously)."""
        self.finish()
        partial = partial_dir(self.root, step)
        if self.env.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            (partial / "rng").mkdir(parents=True)  # creates the checkpoint root on first use
            (partial / "trainer.json").write_text(json.dumps(extras, indent=1) + "\n")
        self._barrier()
        torch.save(_rng_state(), partial / "rng" / f"rank{self.env.rank:05d}.pt")
        if ds is not None:
            # The (empty) universal-checkpoint info lets ds_to_universal reshard it later.
            info = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}}
            ds.save_checkpoint(str(partial), tag=DEEPSPEED_TAG, client_state=info, save_latest=False)
            self._pending = (None, partial, step)
            self.finish()
            return
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        if self.async_save:
            future = dcp.async_save(state, checkpoint_id=partial / "model", process_group=self._group)
            self._pending = (future, partial, step)
        else:
            dcp.save(state, checkpoint_id=partial / "model")
            self._pending = (None, partial, step)
            self.finish()

    def finish(self) -> Path | None:
        """Wait for the save in flight (if any) on every rank, then commit it."""
        if self._pending is None:
            return None
        future, partial, step = self._pending
        self._pending = None
        if future is not None:
            future.result()
        kill_if_asked(KILL_IN_SAVE, self.env.rank, step)  # tests: a rank dying before the commit
        self._barrier()
        digests = {}
        if self.checksums:  # every rank hashes a share of the files, rank 0 records them all
            digests = hash_share(partial, checkpoint_files(partial), self.env.rank, self.env.world_size)
            if self.env.distributed:
                shares = [None] * self.env.world_size
                dist.all_gather_object(shares, digests)
                digests = {name: h for share in shares for name, h in share.items()}
        final = None
        if self.env.is_main:
            final = commit(partial, digests)
            prune(self.root, self.keep)
        self._barrier()
        return final

    def newest(self) -> Path | None:
        """The newest complete checkpoint, once the save in flight (if any) is committed."""
        self.finish()
        return latest_checkpoint(self.root)

    def load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, model_config: dict, ds=None) -> dict:
        """Restore model and optimizer (resharded to the current ranks); return the extras."""
        self._verify_shared(path)
        source = path / "trainer.json"
        extras = json.loads(source.read_text())
        _check_model(source, extras.get("model", {}), model_config)
        saved_ds, now = extras["engine"] == "deepspeed", "deepspeed" if ds is not None else "none or fsdp2"
        if saved_ds != (ds is not None):
            raise CheckpointError(
                f"{source}: written by engine {extras['engine']}, this run uses {now}: DeepSpeed and "
                "torch.distributed.checkpoint formats do not load into each other"
            )
        if ds is not None:
            if extras["world_size"] == self.env.world_size:
                self._load_deepspeed(ds, path)
            else:  # resharded through DeepSpeed's universal format, in a scratch directory
                universal = self.root / f"{path.name}.universal"
                if self.env.is_main:
                    _to_universal(path / DEEPSPEED_TAG, universal / DEEPSPEED_TAG)
                self._barrier()
                try:
                    self._load_deepspeed(ds, universal)
                finally:
                    self._barrier()
                    if self.env.is_main:
                        shutil.rmtree(universal, ignore_errors=True)
            self._restore_rng(path)
            return extras
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        try:
            dcp.load(state, checkpoint_id=path / "model")
        except Exception as exc:  # noqa: BLE001 - reported with the checkpoint's name, nothing applied
            raise CheckpointError(f"{path / 'model'}: could not be read ({type(exc).__name__}: {exc})") from None
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self._restore_rng(path)
        return extras

    def _verify_shared(self, path: Path) -> None:
        """Every rank verifies its share of the files; all raise the first problem found."""
        try:
            verify(path, self.env.rank, self.env.world_size)
            error = None
        except CheckpointError as exc:
            error = str(exc)
        if self.env.distributed:
            errors = [None] * self.env.world_size
            dist.all_gather_object(errors, error)
            error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise CheckpointError(error)

    def _load_deepspeed(self, ds, path: Path) -> None:
        loaded, _ = ds.load_checkpoint(str(path), tag=DEEPSPEED_TAG, load_module_strict=True)
        if loaded is None:
            raise CheckpointError(f"{path / DEEPSPEED_TAG}: DeepSpeed found no checkpoint to load")

    def _restore_rng(self, path: Path) -> None:
        rng = path / "rng" / f"rank{self.env.rank:05d}.pt"
        if rng.is_file():  # a rank that did not exist when the checkpoint was saved keeps its seed
            _set_rng_state(torch.load(rng, weights_only=True))


def saved_world_size(path: Path) -> int | None:
    """How many ranks wrote the checkpoint (None if that cannot be read: load() will say why)."""
    try:
        return int(json.loads((path / "trainer.json").read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _to_universal(source: Path, target: Path) -> None:
    """DeepSpeed's ds_to_universal: per-parameter files any number of ranks can load."""
    shutil.rmtree(target.parent, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(source)]
    cmd += ["--output_folder", str(target), "--num_extract_workers", "1", "--num_merge_workers", "1", "--no_strict"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckpointError(f"{source}: conversion to DeepSpeed's universal format failed:\n{proc.stderr[-2000:]}")


def _check_model(source: Path, saved: dict, current: dict) -> None:
    ignore = {"chunk_size"}  # how the scan is computed, not what the weights are
    diffs = [
        f"model.{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key in sorted(set(saved) | set(current))
        if key not in ignore and saved.get(key) != current.get(key)
    ]
    if diffs:
        raise CheckpointError(f"{source}: saved for a different model: " + "; ".join(diffs))


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
