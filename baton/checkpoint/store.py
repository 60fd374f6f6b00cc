"""Checkpoint directories: naming, atomic commit, verification, pruning.

A checkpoint for step N is written into ``step_0000000N.partial/``. Once every rank has
written its shard, rank 0 writes ``manifest.json`` (every file and its size), then the
``COMPLETE`` marker, and renames the directory to ``step_0000000N/``. Only a directory with
its final name and the marker is ever loaded, and it is verified against its manifest
first, so a half-written, truncated or partly deleted checkpoint is refused, by name.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch

MARKER = "COMPLETE"
MANIFEST = "manifest.json"
PARTIAL = ".partial"
DEEPSPEED_TAG = "deepspeed"  # DeepSpeed's own files live in this subdirectory
_NAME = re.compile(r"^step_(\d{8})$")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def final_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def partial_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}{PARTIAL}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Committed checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(partial: Path) -> Path:
    """Rank 0, after every rank has written: manifest, marker (last), rename to the final name."""
    files = sorted(p for p in partial.rglob("*") if p.is_file())
    for f in files:
        _fsync(f)
    manifest = {str(f.relative_to(partial)): f.stat().st_size for f in files}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    _fsync(partial / MANIFEST)
    (partial / MARKER).write_text("")
    _fsync(partial / MARKER)
    final = partial.with_name(partial.name.removesuffix(PARTIAL))
    if final.exists():  # a previous run's checkpoint of the same step: replaced only now
        shutil.rmtree(final)
    partial.rename(final)
    _fsync(final.parent)
    return final


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints."""
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def remove_partials(root: Path) -> None:
    """Leftovers of saves that never committed (a crash, a kill): never loadable, so removed."""
    if root.is_dir():
        for p in root.glob(f"step_*{PARTIAL}"):
            shutil.rmtree(p, ignore_errors=True)


class _MetadataUnpickler(pickle.Unpickler):
    """Allows only the classes a DCP ``.metadata`` file is made of: no code runs on load."""

    def find_class(self, module: str, name: str):
        allowed = (
            module.startswith("torch.distributed.checkpoint.")
            or (module == "torch" and name == "Size")
            or (module == "torch.serialization" and name == "_get_layout")  # a layout from its name
            or (module == "pathlib" and name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"))
            or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
            or (module == "collections" and name == "OrderedDict")
            or (module == "builtins" and name in ("set", "frozenset", "slice", "tuple", "list", "dict"))
        )
        if not allowed:
            raise CheckpointError(f"refers to {module}.{name}, which a checkpoint has no reason to contain")
        return super().find_class(module, name)


def verify(path: Path) -> dict:
    """Check a checkpoint before anything is read from it; return its manifest."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MARKER} marker): its save never finished")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / MANIFEST}: unreadable manifest ({exc})") from None
    for name, size in manifest.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: shard missing from the checkpoint")
        if f.stat().st_size != size:
            raise CheckpointError(f"{f}: truncated or altered shard ({f.stat().st_size} bytes, manifest says {size})")
    for pt in sorted((path / DEEPSPEED_TAG).glob("*.pt")):
        _check_deepspeed_file(pt)
    metadata = path / "model" / ".metadata"
    if not metadata.is_file():
        return manifest
    try:
        with open(metadata, "rb") as fh:
            _MetadataUnpickler(fh).load()
    except CheckpointError as exc:
        raise CheckpointError(f"{metadata}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable metadata is reported the same way
        raise CheckpointError(f"{metadata}: unreadable checkpoint metadata ({type(exc).__name__}: {exc})") from None
    return manifest


def _check_deepspeed_file(path: Path) -> None:
    """DeepSpeed reads its files with full unpickling: read each first with
    ``weights_only=True``, allowing only the three plain DeepSpeed classes they contain."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    try:
        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
            torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - anything that is not plain data is refused
        raise CheckpointError(f"{path}: not a plain-data DeepSpeed file ({str(exc).splitlines()[0][:200]})") from None
