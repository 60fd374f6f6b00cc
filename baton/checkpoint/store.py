"""Checkpoint directories: naming, atomic commit, verification, pruning.

A checkpoint for step N is written into ``step_0000000N.partial/``. Once every rank has
written its shard, the ranks hash the files (each a share of them), and rank 0 writes
``manifest.json`` (every file, its size and SHA-256), then the ``COMPLETE`` marker, and
renames the directory to ``step_0000000N/``. Only a directory with its final name and the
marker is ever loaded, and it is verified against its manifest first (the ranks again
sharing the hashing), so a half-written, truncated, corrupted or partly deleted
checkpoint is refused, by name.
"""

from __future__ import annotations

import hashlib
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


def checkpoint_step(path: Path) -> int:
    """The step of a committed checkpoint directory (``step_0000000N``)."""
    return int(_NAME.match(path.name).group(1))


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


def checkpoint_files(path: Path) -> list[str]:
    """Every file of a checkpoint directory (relative names, sorted), bookkeeping aside."""
    names = (str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    return sorted(n for n in names if n not in (MANIFEST, MARKER))


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def hash_share(path: Path, names: list[str], rank: int, world_size: int) -> dict[str, str]:
    """SHA-256 of this rank's share of ``names`` (every world_size-th file from ``rank``)."""
    return {name: sha256(path / name) for name in names[rank::world_size]}


def commit(partial: Path, digests: dict[str, str]) -> Path:
    """Rank 0, after every rank has written: manifest (sizes, and the SHA-256 of every file
    in ``digests``), marker (last), rename to the final name."""
    names = checkpoint_files(partial)
    manifest = {}
    for name in names:
        _fsync(partial / name)
        manifest[name] = {"bytes": (partial / name).stat().st_size}
        if name in digests:
            manifest[name]["sha256"] = digests[name]
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


def verify(path: Path, rank: int = 0, world_size: int = 1) -> dict:
    """Check a checkpoint before anything is read from it; return its manifest. Every rank
    checks that the files are there with their sizes; the contents (hashes, and that pickled
    files hold only plain data) are checked for this rank's share of the files."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MARKER} marker): its save never finished")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        sizes = {name: int(entry["bytes"]) for name, entry in manifest.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path / MANIFEST}: unreadable manifest ({type(exc).__name__}: {exc})") from None
    for name, size in sizes.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: shard missing from the checkpoint")
        if f.stat().st_size != size:
            raise CheckpointError(f"{f}: truncated or altered shard ({f.stat().st_size} bytes, manifest says {size})")
    extra = sorted(set(checkpoint_files(path)) - set(manifest))
    if extra:
        raise CheckpointError(f"{path / extra[0]}: not part of the checkpoint as it was saved (not in its manifest)")
    for name in sorted(manifest)[rank::world_size]:
        _check_content(path / name, manifest[name])
    return manifest


def _check_content(f: Path, entry: dict) -> None:
    if "sha256" in entry and sha256(f) != entry["sha256"]:
        raise CheckpointError(f"{f}: corrupted shard (its SHA-256 differs from the one recorded when it was saved)")
    if f.parent.name == DEEPSPEED_TAG and f.suffix == ".pt":
        _check_deepspeed_file(f)
    elif f.name == ".metadata":
        try:
            with open(f, "rb") as fh:
                _MetadataUnpickler(fh).load()
        except CheckpointError as exc:
            raise CheckpointError(f"{f}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any unreadable metadata is reported the same way
            raise CheckpointError(f"{f}: unreadable checkpoint metadata ({type(exc).__name__}: {exc})") from None


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
