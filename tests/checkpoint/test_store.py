"""Checkpoint directories: what counts as complete, pruning, hashes, and refusing unsafe
metadata or altered files."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest

from baton.checkpoint.store import (
    MARKER,
    CheckpointError,
    checkpoint_files,
    commit,
    complete_checkpoints,
    hash_share,
    partial_dir,
    prune,
    remove_partials,
    verify,
)


def fake_checkpoint(root, step, metadata: bytes = b""):
    partial = partial_dir(root, step)
    (partial / "model").mkdir(parents=True)
    (partial / "model" / ".metadata").write_bytes(metadata or pickle.dumps({"shape": (2, 3)}))
    (partial / "model" / "__0_0.distcp").write_bytes(b"x" * 10)
    return partial


def commit_hashed(partial):
    return commit(partial, hash_share(partial, checkpoint_files(partial), 0, 1))


def test_only_committed_checkpoints_count(tmp_path):
    commit_hashed(fake_checkpoint(tmp_path, 1))
    fake_checkpoint(tmp_path, 2)  # never committed
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000001"]
    remove_partials(tmp_path)
    assert not partial_dir(tmp_path, 2).exists()


def test_prune_keeps_the_newest(tmp_path):
    for step in (2, 4, 6):
        commit_hashed(fake_checkpoint(tmp_path, step))
    prune(tmp_path, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000004", "step_00000006"]


def test_missing_marker_is_refused(tmp_path):
    final = commit_hashed(fake_checkpoint(tmp_path, 1))
    (final / MARKER).unlink()
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        verify(final)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_metadata_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    final = commit_hashed(fake_checkpoint(tmp_path, 1, metadata=pickle.dumps(Exploit())))
    with pytest.raises(CheckpointError, match=r"\.metadata: refers to (posix|os)\.system"):
        verify(final)
    assert not (tmp_path / "pwned").exists()


def test_manifest_records_every_file(tmp_path):
    final = commit_hashed(fake_checkpoint(tmp_path, 3))
    manifest = json.loads((final / "manifest.json").read_text())
    metadata = pickle.dumps({"shape": (2, 3)})
    assert manifest == {
        "model/.metadata": {"bytes": len(metadata), "sha256": hashlib.sha256(metadata).hexdigest()},
        "model/__0_0.distcp": {"bytes": 10, "sha256": hashlib.sha256(b"x" * 10).hexdigest()},
    }


def test_a_flipped_byte_is_found_by_the_rank_that_hashes_that_file(tmp_path):
    final = commit_hashed(fake_checkpoint(tmp_path, 1))
    shard = final / "model" / "__0_0.distcp"
    shard.write_bytes(b"x" * 4 + b"y" + b"x" * 5)  # same size: only the hash can tell
    with pytest.raises(CheckpointError, match=f"{shard}: corrupted shard"):
        verify(final)
    # Two ranks share the files in sorted order: rank 1 hashes the second (the shard).
    verify(final, rank=0, world_size=2)
    with pytest.raises(CheckpointError, match="corrupted shard"):
        verify(final, rank=1, world_size=2)


def test_a_file_not_in_the_manifest_is_refused(tmp_path):
    final = commit_hashed(fake_checkpoint(tmp_path, 1))
    (final / "model" / "__1_0.distcp").write_bytes(b"z")
    with pytest.raises(CheckpointError, match=r"__1_0.distcp: not part of the checkpoint as it was saved"):
        verify(final)


def test_a_malformed_manifest_is_refused(tmp_path):
    final = commit_hashed(fake_checkpoint(tmp_path, 1))
    (final / "manifest.json").write_text('{"model/.metadata": 12}')
    with pytest.raises(CheckpointError, match=r"manifest.json: unreadable manifest"):
        verify(final)


def test_without_hashes_only_sizes_are_checked(tmp_path):
    final = commit(fake_checkpoint(tmp_path, 1), {})
    assert all("sha256" not in entry for entry in json.loads((final / "manifest.json").read_text()).values())
    verify(final)
