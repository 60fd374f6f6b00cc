"""Checkpoint directories: what counts as complete, pruning, and refusing unsafe metadata."""

from __future__ import annotations

import json
import pickle

import pytest

from baton.checkpoint.store import (
    MARKER,
    CheckpointError,
    commit,
    complete_checkpoints,
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


def test_only_committed_checkpoints_count(tmp_path):
    commit(fake_checkpoint(tmp_path, 1))
    fake_checkpoint(tmp_path, 2)  # never committed
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000001"]
    remove_partials(tmp_path)
    assert not partial_dir(tmp_path, 2).exists()


def test_prune_keeps_the_newest(tmp_path):
    for step in (2, 4, 6):
        commit(fake_checkpoint(tmp_path, step))
    prune(tmp_path, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000004", "step_00000006"]


def test_missing_marker_is_refused(tmp_path):
    final = commit(fake_checkpoint(tmp_path, 1))
    (final / MARKER).unlink()
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        verify(final)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_metadata_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    final = commit(fake_checkpoint(tmp_path, 1, metadata=pickle.dumps(Exploit())))
    with pytest.raises(CheckpointError, match=r"\.metadata: refers to (posix|os)\.system"):
        verify(final)
    assert not (tmp_path / "pwned").exists()


def test_manifest_records_every_file(tmp_path):
    final = commit(fake_checkpoint(tmp_path, 3))
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest == {"model/.metadata": len(pickle.dumps({"shape": (2, 3)})), "model/__0_0.distcp": 10}
