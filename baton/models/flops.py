"""Parameter counts and FLOPs per token, from the config alone (no model is built)."""

from __future__ import annotations

from dataclasses import dataclass

from baton.models.config import ModelConfig


def mixer_linear_params(cfg: ModelConfig) -> int:
    """Weights of the token mixer's matrix multiplies (each costs 2 FLOPs per weight per token)."""
    d = cfg.d_model
    if cfg.mixer == "gla":
        dk, dv, r = cfg.key_dim, cfg.value_dim, cfg.gate_low_rank
        return 2 * d * dk + 2 * d * dv + d * r + r * dk + dv * d
    inner, N, H = cfg.ssd_inner, cfg.ssd_state_dim, cfg.ssd_heads
    return d * (2 * inner + 2 * N + H) + inner * d


def count_parameters(cfg: ModelConfig) -> int:
    """Every trainable parameter, counting a tied embedding/head once."""
    d, V = cfg.d_model, cfg.vocab_size
    mixer = mixer_linear_params(cfg)
    if cfg.mixer == "gla":
        mixer += cfg.key_dim + cfg.value_dim // cfg.n_heads  # gate bias, per-head norm
    else:
        conv_dim = cfg.ssd_inner + 2 * cfg.ssd_state_dim
        mixer += conv_dim * (cfg.conv_size + 1) + 3 * cfg.ssd_heads + cfg.ssd_inner
    block = mixer + 3 * d * cfg.mlp_hidden + 2 * d
    head = 0 if cfg.tie_embeddings else V * d
    return V * d + cfg.n_layers * block + d + head


def scan_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    """(heads, key dim, value dim) of each layer's recurrent state."""
    if cfg.mixer == "gla":
        return cfg.n_heads, cfg.key_dim // cfg.n_heads, cfg.value_dim // cfg.n_heads
    return cfg.ssd_heads, cfg.ssd_state_dim, cfg.ssd_head_dim


@dataclass(frozen=True)
class FlopsPerToken:
    matmul: int  # projections, MLP and LM head
    recurrence: int  # chunked scan (intra-chunk scores and outputs, state update and readout) + conv

    @property
    def forward(self) -> int:
        return self.matmul + self.recurrence

    @property
    def training(self) -> int:
        """Forward + backward (twice the forward), the usual 3x."""
        return 3 * self.forward


def flops_per_token(cfg: ModelConfig) -> FlopsPerToken:
    """Forward FLOPs for one token, as the chunked algorithm performs them.

    Per layer and head the chunked scan costs ``2C(K+V)`` (a C-wide score row and its
    weighted sum of values) plus ``4KV`` (adding ``k vᵀ`` to the chunk state and reading
    the state with ``q``); the SSD conv costs ``2W`` per channel.
    """
    d, C = cfg.d_model, cfg.chunk_size
    H, K, V = scan_shape(cfg)
    matmul = cfg.n_layers * 2 * (mixer_linear_params(cfg) + 3 * d * cfg.mlp_hidden) + 2 * d * cfg.vocab_size
    recurrence = H * (2 * C * (K + V) + 4 * K * V)
    if cfg.mixer == "ssd":
        recurrence += 2 * cfg.conv_size * (cfg.ssd_inner + 2 * cfg.ssd_state_dim)
    return FlopsPerToken(matmul, cfg.n_layers * recurrence)
