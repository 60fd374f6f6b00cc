"""Activation bytes per token that a forward keeps for its backward, from the config alone: one
formula per layer type and kernel path, each term a tensor autograd keeps (its width from the
config, its dtype as the model computes it). ``tests/models/test_memory.py`` and
``bench/memory.py`` check them against exact counts (``profile/activations.py``).

``a`` is the activation dtype's size (2 under bf16 autocast, where the residual stream is bf16;
4 in fp32); ``F`` = 4: fp32, which the scans' cumulative gates and scores, the norms' statistics,
the log-sum-exp and SSD's conv (its fp32 weight promotes it) use whatever ``a`` is. Documents are
assumed chunk-aligned: a document's last partial chunk costs up to ``chunk_size - 1`` tokens more.
"""

from __future__ import annotations

from dataclasses import dataclass

from baton.config import ModelConfig

F = 4  # fp32
PATHS = ("triton", "reference")


def _gla_mixer(cfg: ModelConfig, a: int, path: str) -> int:
    """What the GLA mixer keeps, its normed input included."""
    d, dk, dv, H, C = cfg.d_model, cfg.key_dim, cfg.value_dim, cfg.n_heads, cfg.chunk_size
    K, V = dk // H, dv // H
    kept = a * d  # the normed input, shared by the five projections
    kept += a * (2 * dk + dv)  # q, k, v
    kept += a * (cfg.gate_low_rank + dk)  # the gate's low-rank activation, its input to softplus
    kept += a * 3 * dv + F * H  # scan output, output gate, gated norm's statistics, its output (o_proj's input)
    if path == "triton":  # cumulative gates, chunk states (input dtype), intra-chunk scores
        return kept + F * dk + a * H * K * V // C + F * H * C
    # the reference scan recomputes its work in backward: it keeps its gate input; the unfused
    # gated norm keeps its norm's output and the gate's SiLU
    return kept + a * dk + 2 * a * dv


def _ssd_mixer(cfg: ModelConfig, a: int, path: str) -> int:
    """What the SSD (Mamba2) mixer keeps, its normed input included."""
    d, inner, N, H, C = cfg.d_model, cfg.ssd_inner, cfg.ssd_state_dim, cfg.ssd_heads, cfg.chunk_size
    conv, W = inner + 2 * N, cfg.conv_size
    kept = a * d + a * (2 * inner + 2 * N + H)  # normed input, in_proj output (z, xBC, dt)
    kept += a * conv + (W - 1)  # the conv's padded input and its W-1 causal masks (bool)
    kept += 2 * F * conv  # conv output and its SiLU (fp32: promoted by the fp32 conv weight)
    kept += F * inner + 2 * F * H  # x·dt, dt before and after softplus
    kept += F * inner + F  # y + D x, the gated norm's statistics
    kept += a * inner  # the norm's output as out_proj keeps it
    if path == "triton":  # cumulative gates, chunk states, scores; C and B are kept as their broadcast
        return kept + F * H + F * H * N * cfg.ssd_head_dim // C + F * H * C  # views, laid out again in backward
    # the reference scan keeps its gate input; the unfused gated norm its product and SiLU(z)
    return kept + F * H + F * inner + a * inner


def _gdn_mixer(cfg: ModelConfig, a: int, path: str) -> int:
    """What the Gated DeltaNet mixer keeps, its normed input included. The delta-rule op keeps
    its inputs alone and runs again in backward on either path (its paths differ only in the
    chunk-to-chunk state walk, ``kernels/delta_triton.py``); the Triton path fuses the gated norm."""
    d, H, W = cfg.d_model, cfg.n_heads, cfg.conv_size
    HK, HV = H * cfg.gdn_head_dim, H * cfg.gdn_value_head_dim
    conv = 2 * HK + HV
    kept = a * d + 2 * a * conv + (W - 1)  # normed input, q/k/v projection, the conv's padded input, masks
    kept += 2 * F * conv  # conv output and its SiLU (fp32: promoted by the fp32 conv weight)
    kept += 2 * F * HK + 2 * F * H  # unit-norm q and k, their inverse norms
    kept += 5 * F * H  # α's pre-activation plus dt_bias, its softplus, log α; β's sigmoid, β
    kept += F * HV + F * H  # scan output (fp32 as v), the gated norm's statistics
    kept += 2 * a * HV  # output gate, the gated norm's output as o_proj keeps it
    if path == "triton":
        return kept
    return kept + F * HV + a * HV  # the unfused gated norm keeps its norm's output (fp32) and the gate's SiLU


def _newton_mixer(cfg: ModelConfig, a: int, path: str) -> int:
    """What a ParaGRU / ParaLSTM mixer keeps: Newton's iterations keep nothing (implicit
    differentiation needs the solution alone), on either path."""
    d, pair = cfg.d_model, cfg.mixer == "paralstm"
    kept = F * d + F * 3 * d  # the normed input in fp32 (the input projection's), the pre-activations
    kept += F * d * (2 if pair else 1)  # the solution h (LSTM: [c, h])
    return kept + (a * d if a != F else 0)  # out_proj's input: h cast to bf16 (in fp32 a view of h)


def _attn_mixer(cfg: ModelConfig, a: int, path: str) -> int:
    """What the gated attention mixer keeps (either path: attention runs its blockwise reference,
    which keeps its inputs, output and log-sum-exp and recomputes the scores in backward). The
    rotary's products keep only their cos and sin (the rotated tensor needs no gradient of
    them). Attention takes q, k, v in fp32: under bf16 autocast those are copies; in fp32 they
    are the rotated q and k (the normed q and a view of the keys and values without rotary)
    and a view of the keys and values."""
    d, H, Hk, D, dims = cfg.d_model, cfg.attn_heads, cfg.attn_kv_heads, cfg.attn_head_dim, cfg.rotary_dims
    kept = a * d  # the normed input, shared by the four projections
    kept += a * H * D + F * H + a * Hk * D + F * Hk  # q's and k's norms: their inputs and statistics
    kept += 2 * a * dims if dims else 0  # cos and sin of q's and of k's positions
    if a == F:
        kept += a * H * D + (a * Hk * D if dims else 0) + a * Hk * 2 * D  # q, rotated k, the keys and values
    else:
        kept += F * H * D + 2 * F * Hk * D  # fp32 copies of q, k, v
    kept += F * H * D + F * H + (a * H * D if a != F else 0)  # the output (fp32, and cast), log-sum-exp
    return kept + 2 * a * H * D  # the sigmoid gate, the gated output as o_proj keeps it


MIXERS = {
    "gla": _gla_mixer, "ssd": _ssd_mixer, "gdn": _gdn_mixer, "paragru": _newton_mixer, "paralstm": _newton_mixer,
    "attn": _attn_mixer,
}  # fmt: skip


@dataclass(frozen=True)
class ActivationBytes:
    """Bytes per token: kept by the layers under the checkpointing policy (all of them, and per
    layer: their mean, each layer's own in a model of one mixer), kept by the head and loss,
    and held while one layer's backward runs (its activations' gradients, and its activations
    again where they were recomputed; the largest layer's)."""

    layers: int
    head_loss: int
    layer_backward: int
    n_layers: int = 1

    @property
    def per_layer(self) -> int:
        return self.layers // self.n_layers


def activation_bytes(cfg: ModelConfig, policy: str, dtype_bytes: int, path: str, fused_loss: bool) -> ActivationBytes:
    """Per token: see :class:`ActivationBytes`. ``policy``: none | full | mixer."""
    a, d = dtype_bytes, cfg.d_model
    mlp = a * d + F + a * d + 4 * a * cfg.mlp_hidden  # residual, norm statistics and output; SwiGLU's four
    block_input = a * d + F  # kept by the mixer's norm, with its statistics
    layers, backward = 0, 0
    for name in cfg.layer_mixers:
        everything = block_input + MIXERS[name](cfg.for_mixer(name), a, path) + mlp
        layers += {
            "none": everything,
            "full": a * d,  # the block input alone
            "mixer": block_input + a * d + mlp,  # the mixer's input instead of its activations
        }[policy]
        # A layer's backward holds about as much in gradients as the layer keeps with no
        # checkpointing; where it was recomputed, those activations too.
        backward = max(backward, everything if policy == "none" else 2 * everything)
    head = a * d + F if fused_loss else 2 * a * d + F + F * cfg.vocab_size  # + the fp32 log-softmax
    return ActivationBytes(layers, head, backward, cfg.n_layers)


def attention_workspace(cfg: ModelConfig, keys: int) -> int:
    """Transient bytes of an attention layer's backward over a query block that sees ``keys``
    keys (the blockwise reference): its fp32 scores, probabilities and their gradient."""
    if "attn" not in cfg.layer_mixers:
        return 0
    return 3 * F * cfg.attn_heads * cfg.attn_block * keys


def kv_bytes(cfg: ModelConfig, tokens: int, dtype_bytes: int) -> int:
    """Keys and values of ``tokens`` tokens over the attention layers (a prefix received from
    earlier ranks, or carried between slices)."""
    return cfg.layer_mixers.count("attn") * tokens * cfg.attn_kv_heads * 2 * cfg.attn_head_dim * dtype_bytes
