"""What a relay hop costs: one model of the links between ranks, shared by the planner (which
prices a chain's hops when it cuts documents) and the scaling model (which predicts a step's
time per relay strategy), both built from the same ``parallel.planner`` keys.

The defaults are published figures for a node of 8 H100 SXM and NDR InfiniBand: NVLink 4 gives
450 GB/s per direction (NCCL reaches 150-350 GB/s point to point; 200 taken), one 400 Gb/s NDR
port per GPU 50 GB/s (25 taken, for NCCL's measured ~25-45 GB/s on multi-node point-to-point),
and a few microseconds per NCCL message (10 us taken). :meth:`Interconnect.fit` calibrates
them from measured hops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from baton.config import PlannerConfig


@dataclass
class Interconnect:
    """``messages`` messages of n bytes in all between two ranks take ``messages · latency_s +
    n / bandwidth``; the bandwidth of a node's links inside it, of the network between nodes."""

    latency_s: float = 10e-6
    intra_gb_per_s: float = 200.0
    inter_gb_per_s: float = 25.0
    ranks_per_node: int = 8

    @classmethod
    def from_config(cls, p: PlannerConfig) -> Interconnect:
        return cls(p.hop_latency_s, p.intra_node_gb_per_s, p.inter_node_gb_per_s, p.ranks_per_node)

    def hop(self, nbytes: float, a: int, b: int, messages: int = 1) -> float:
        same = a // self.ranks_per_node == b // self.ranks_per_node
        return messages * self.latency_s + nbytes / ((self.intra_gb_per_s if same else self.inter_gb_per_s) * 1e9)

    def hops(self, nbytes: float, order: np.ndarray) -> np.ndarray:
        """Seconds of each one-message hop order[i] -> order[i + 1]."""
        same = order[:-1] // self.ranks_per_node == order[1:] // self.ranks_per_node
        return self.latency_s + nbytes / (np.where(same, self.intra_gb_per_s, self.inter_gb_per_s) * 1e9)

    @classmethod
    def fit(cls, nbytes: list[float], seconds: list[float], ranks_per_node: int = 8) -> Interconnect:
        """Latency and bandwidth from measured one-way hops inside a node (least squares of
        ``seconds = latency + bytes / bandwidth``), the same bandwidth between nodes."""
        slope, intercept = np.polyfit(np.asarray(nbytes, float), np.asarray(seconds, float), 1)
        gb_per_s = 1e-9 / max(slope, 1e-18)
        return cls(max(float(intercept), 0.0), gb_per_s, gb_per_s, ranks_per_node)
