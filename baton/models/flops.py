"""Parameter counts, FLOPs per token and relay traffic, from the config alone (no model is built).

Per-mixer functions read ``cfg.mixer`` (a config as one layer sees it, ``cfg.for_mixer``); the
model-wide ones sum over ``cfg.layer_mixers``, so a hybrid counts each layer as what it is.
Attention's work is not per token: a query attends to every earlier key of its document, so
its FLOPs are per (query, key) pair (:attr:`FlopsPerToken.attention_pair`, :func:`causal_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from baton.config import ModelConfig


def mixer_linear_params(cfg: ModelConfig) -> int:
    """Weights of the token mixer's matrix multiplies (each costs 2 FLOPs per weight per token)."""
    d = cfg.d_model
    if cfg.mixer == "attn":
        H, Hk, D = cfg.attn_heads, cfg.attn_kv_heads, cfg.attn_head_dim
        return 3 * d * H * D + 2 * d * Hk * D  # q, the output gate and o_proj; k and v
    if cfg.mixer == "gla":
        dk, dv, r = cfg.key_dim, cfg.value_dim, cfg.gate_low_rank
        return 2 * d * dk + 2 * d * dv + d * r + r * dk + dv * d
    if cfg.mixer == "gdn":
        H, K, V = scan_shape(cfg)
        return d * H * (2 * K + V) + d * 2 * H + 2 * d * H * V  # q/k/v, the gates, output gate and o_proj
    if cfg.newton:
        return 3 * d * d // cfg.n_heads + d * d  # the block-diagonal input projection, out_proj
    inner, N, H = cfg.ssd_inner, cfg.ssd_state_dim, cfg.ssd_heads
    return d * (2 * inner + 2 * N + H) + inner * d


def count_parameters(cfg: ModelConfig) -> int:
    """Every trainable parameter, counting a tied embedding/head once."""
    d, V = cfg.d_model, cfg.vocab_size
    blocks = sum(mixer_params(cfg.for_mixer(name)) + 3 * d * cfg.mlp_hidden + 2 * d for name in cfg.layer_mixers)
    head = 0 if cfg.tie_embeddings else V * d
    return V * d + blocks + d + head


def mixer_params(cfg: ModelConfig) -> int:
    """One layer's token mixer's parameters."""
    d, mixer = cfg.d_model, mixer_linear_params(cfg)
    if cfg.mixer == "attn":
        mixer += 2 * cfg.attn_head_dim  # the q and k norms
    elif cfg.mixer == "gla":
        mixer += cfg.key_dim + cfg.value_dim // cfg.n_heads  # gate bias, per-head norm
    elif cfg.mixer == "gdn":
        H, K, Vh = scan_shape(cfg)
        mixer += H * (2 * K + Vh) * cfg.conv_size + 2 * H + Vh  # conv (no bias), dt_bias and A_log, head norm
    elif cfg.newton:
        mixer += 6 * d  # the input projection's bias, the diagonal recurrent weights
    else:
        conv_dim = cfg.ssd_inner + 2 * cfg.ssd_state_dim
        mixer += conv_dim * (cfg.conv_size + 1) + 3 * cfg.ssd_heads + cfg.ssd_inner
    return mixer


def recurrent_layers(cfg: ModelConfig) -> list[ModelConfig]:
    """The config as each recurrent layer sees it, in layer order (attention layers left out)."""
    return [cfg.for_mixer(name) for name in cfg.layer_mixers if name != "attn"]


def attention_layers(cfg: ModelConfig) -> int:
    return cfg.layer_mixers.count("attn")


def recurrent_config(cfg: ModelConfig) -> ModelConfig:
    """The config of the first recurrent layer (what the whole-model relay estimates take as
    every recurrent layer's shape)."""
    return recurrent_layers(cfg)[0]


def scan_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    """(heads, key dim, value dim) of a recurrent layer's state (the first recurrent layer's, for
    a hybrid)."""
    cfg = recurrent_config(cfg) if cfg.pattern else cfg
    if cfg.mixer == "gla":
        return cfg.n_heads, cfg.key_dim // cfg.n_heads, cfg.value_dim // cfg.n_heads
    if cfg.mixer == "gdn":
        return cfg.n_heads, cfg.gdn_head_dim, cfg.gdn_value_head_dim
    if cfg.newton:  # per head D units of one state (GRU's h) or two (LSTM's [c, h])
        return cfg.n_heads, cfg.d_model // cfg.n_heads, 2 if cfg.mixer == "paralstm" else 1
    return cfg.ssd_heads, cfg.ssd_state_dim, cfg.ssd_head_dim


def summary_bytes(cfg: ModelConfig) -> int:
    """Bytes of one layer's segment summary (A, S) in fp32, what the all-gather and log-depth
    relays send per hop: the transition per head (K for GLA's per-key-dim gate, 1 for SSD's
    scalar one, K×K for the delta rule's matrix; a Newton-trained RNN's Jacobian product, D
    per head for ParaGRU, a 2×2 block per unit for ParaLSTM) and the state K×V per head."""
    cfg = recurrent_config(cfg)
    H, K, V = scan_shape(cfg)
    transition = {"gla": K, "ssd": 1, "gdn": K * K, "paragru": K, "paralstm": 2 * K * V}[cfg.mixer]
    return 4 * H * (transition + K * V)


def forward_relays(cfg: ModelConfig) -> int:
    """Relays per recurrent layer in a forward pass: one for the linear mixers, one per Newton
    iteration for the nonlinear ones."""
    return cfg.newton_iterations if cfg.newton else 1


def relay_messages_per_hop(cfg: ModelConfig) -> int:
    """Dependent messages per training step between neighbouring ranks of a chain, over all
    layers: per recurrent layer the forward relays and the backward's one (K + 1 relays for a
    Newton-trained RNN, which also sends its first guess's last state); per attention layer
    the keys and values forward and their gradient back."""
    recurrent = sum(forward_relays(layer) + 1 + layer.newton for layer in recurrent_layers(cfg))
    return recurrent + 2 * attention_layers(cfg)


def relay_bytes_per_hop(cfg: ModelConfig) -> int:
    """Bytes one hop of the recurrent relay carries in a training step: every recurrent layer's
    summaries forward (and a Newton-trained RNN's first-guess state) and its state gradient
    back. (An attention layer's keys and values grow with the document: :func:`kv_bytes_per_token`.)"""
    total = 0
    for layer in recurrent_layers(cfg):
        H, K, V = scan_shape(layer)
        total += forward_relays(layer) * summary_bytes(layer) + (1 + layer.newton) * 4 * H * K * V
    return total


def kv_bytes_per_token(cfg: ModelConfig, element_bytes: int = 2) -> int:
    """Bytes per token of a document continuing across a cut that a hop carries in a training
    step, over the attention layers: each token's keys and values forward and their gradient
    back (``element_bytes``: the activation dtype's, bf16 by default: what GPUs train in)."""
    return attention_layers(cfg) * 2 * cfg.attn_kv_heads * 2 * cfg.attn_head_dim * element_bytes


def causal_pairs(bounds: list[int], first_offset: int = 0) -> int:
    """(query, key) pairs causal attention scores over a packed piece with document ``bounds``,
    its first document continuing ``first_offset`` earlier tokens: a document's tokens [a, b)
    see (b² − a² + b − a) / 2 keys in all."""
    total = 0
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        a = first_offset if i == 0 else 0
        b = a + end - start
        total += (b * b - a * a + b - a) // 2
    return total


@dataclass(frozen=True)
class FlopsPerToken:
    matmul: int  # projections, MLP and LM head
    recurrence: int  # chunked scan (intra-chunk scores and outputs, state update and readout) + conv
    attention_pair: int = 0  # per (query, key) pair, over the attention layers: q·k and p·v

    @property
    def forward(self) -> int:
        """Per token, attention's pairs not included."""
        return self.matmul + self.recurrence

    @property
    def training(self) -> int:
        """Forward + backward (twice the forward), the usual 3x; attention's pairs not included."""
        return 3 * self.forward

    def training_step(self, tokens: int, pairs: int) -> int:
        """A training step's FLOPs over ``tokens`` tokens whose attention scores ``pairs``
        (query, key) pairs (:func:`causal_pairs`)."""
        return 3 * (tokens * self.forward + pairs * self.attention_pair)


def flops_per_token(cfg: ModelConfig) -> FlopsPerToken:
    """Forward FLOPs for one token, as the chunked algorithm performs them.

    Per layer and head the chunked scan costs ``2C(K+V)`` (a C-wide score row and its
    weighted sum of values) plus ``4KV`` (adding ``k vᵀ`` to the chunk state and reading
    the state with ``q``); the short convs cost ``2W`` per channel. The delta rule's chunk
    costs more (:func:`delta_rule_flops`).
    """
    d = cfg.d_model
    matmul = 2 * d * cfg.vocab_size
    recurrence = 0
    for name in cfg.layer_mixers:
        layer = cfg.for_mixer(name)
        matmul += 2 * (mixer_linear_params(layer) + 3 * d * cfg.mlp_hidden)
        recurrence += 0 if name == "attn" else recurrence_flops(layer)
    pair = 4 * cfg.attn_heads * cfg.attn_head_dim * attention_layers(cfg)  # a score and its weighted value
    return FlopsPerToken(matmul, recurrence, pair)


def recurrence_flops(cfg: ModelConfig) -> int:
    """Per token, one recurrent layer's scan and conv (see :func:`flops_per_token`)."""
    C = cfg.chunk_size
    H, K, V = scan_shape(cfg)
    if cfg.mixer == "gdn":
        recurrence = H * (delta_rule_flops(C, K, V) + C * (K + V)) + 2 * cfg.conv_size * H * (2 * K + V)
    elif cfg.newton:
        recurrence = newton_flops(cfg)
    else:
        recurrence = H * (2 * C * (K + V) + 4 * K * V)
    if cfg.mixer == "ssd":
        recurrence += 2 * cfg.conv_size * (cfg.ssd_inner + 2 * cfg.ssd_state_dim)
    return recurrence


def delta_rule_flops(C: int, K: int, V: int) -> int:
    """Matmul FLOPs per token and head of the chunked delta rule (``kernels/delta_ref.py``):
    ``K Kᵀ`` and ``Q Kᵀ`` (2CK each), the chunk's transition ``K̃ᵀ W`` (2K²) and update
    ``K̃ᵀ Ũ``, the new values ``Ũ − W S``, the readout ``Q S`` (2KV each), the intra-chunk
    outputs (2CV), and moving the state across chunks (2K²V / C). The triangular solve
    (C(K + V): forward substitution over the chunk) is added by :func:`flops_per_token`."""
    return 4 * C * K + 2 * C * V + 6 * K * V + 2 * K * K + 2 * K * K * V // C


# Elementwise operations per unit (a transcendental counted as one): the cell's step and its
# Jacobian (GRU's diagonal, LSTM's 2×2 block), and one token of the linear scan (GRU: a multiply
# and an add; LSTM: a 2×2 block times a pair and its sum).
CELL_OPS = {"paragru": (14, 20, 2), "paralstm": (16, 28, 6)}


def newton_flops(cfg: ModelConfig) -> int:
    """Per token and layer: the first guess (one cell step), then per Newton iteration the cell,
    its Jacobian, ``b = f − J h`` and the scan, over ``d_model`` units. Elementwise work, which
    runs far below matmul speed: a count for the cost model, not a claim on tensor cores."""
    step, jacobian, scan = CELL_OPS[cfg.mixer]
    return cfg.d_model * (step + cfg.newton_iterations * (step + jacobian + 2 * scan))
