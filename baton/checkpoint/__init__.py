"""Sharded checkpoints: every rank writes its own shard (torch.distributed.checkpoint), a
checkpoint is committed atomically, verified before it is read, and can be loaded on a
different number of ranks or exported to a single safetensors file."""

from baton.checkpoint.store import CheckpointError, complete_checkpoints, latest_checkpoint

__all__ = ["CheckpointError", "complete_checkpoints", "latest_checkpoint"]
