"""baton's Gated DeltaNet models and GDN + attention hybrids as Hugging Face transformers' Qwen3.5
text model (``Qwen3_5ForCausalLM``, config ``qwen3_5_text``: ``linear_attention`` layers are
Gated DeltaNet, ``full_attention`` ones gated attention), no remote code: the config and the
renamed weights, both ways (``baton export --format hf``, ``baton import``). Groundwork of issue
"models in and out": the other families, the bundled modeling file, tokenizers, sharded
output and lm-eval are still to come.

The conventions that differ, each found by the parity test (``tests/checkpoint/test_hf.py``):

- Qwen3.5's RMSNorms outside the GDN head norm are zero-centred (``x̂ · (1 + w)``): baton's
  weight minus one;
- the attention's query and output-gate projections are one matrix, interleaved per head
  (head h's D query rows, then its D gate rows);
- GDN's conv weight is ``nn.Conv1d``'s [C, 1, W] (the same taps, oldest first);
- GDN's gate projection is two: ``in_proj_a`` (α's pre-activation) and ``in_proj_b`` (β's);
- the SwiGLU's fused gate/up projection is two.

What the class cannot express is refused (:class:`UnsupportedExport`), never exported to
compute something else: β in [0, 2] (Qwen3.5's β is a sigmoid), other mixers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from baton.checkpoint.store import CheckpointError
from baton.config import ModelConfig


class UnsupportedExport(CheckpointError):
    """The model has something the target class does not compute; the message says what."""


def check_qwen35(cfg: ModelConfig) -> None:
    unsupported = sorted({m for m in cfg.layer_mixers if m not in ("gdn", "attn")})
    if unsupported:
        raise UnsupportedExport(f"Qwen3.5 has Gated DeltaNet and attention layers only; this model has {unsupported}")
    if cfg.allow_neg_eigval:
        raise UnsupportedExport("model.allow_neg_eigval: Qwen3.5's beta is a sigmoid in [0, 1], this model's in [0, 2]")


def qwen35_config(cfg: ModelConfig) -> dict:
    """``config.json`` of the Qwen3.5 text model computing what ``cfg``'s model computes."""
    check_qwen35(cfg)
    return {
        "architectures": ["Qwen3_5ForCausalLM"],
        "model_type": "qwen3_5_text",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layers,
        "layer_types": ["full_attention" if m == "attn" else "linear_attention" for m in cfg.layer_mixers],
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "num_attention_heads": cfg.attn_heads,
        "num_key_value_heads": cfg.attn_kv_heads,
        "head_dim": cfg.attn_head_dim,
        "attention_bias": False,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": cfg.rotary_theta,
            "partial_rotary_factor": cfg.rotary_fraction,
        },
        "linear_conv_kernel_dim": cfg.conv_size,
        "linear_key_head_dim": cfg.gdn_head_dim,
        "linear_value_head_dim": cfg.gdn_value_head_dim,
        "linear_num_key_heads": cfg.n_heads,
        "linear_num_value_heads": cfg.n_heads,
        "initializer_range": cfg.init_std,
    }


# Per layer, baton's name (under ``blocks.i.``) and Qwen3.5's (under ``model.layers.i.``) of the
# weights that are the same tensor, and of those Qwen3.5 keeps zero-centred (w - 1); by mixer, and
# for every layer (""). The rest are reshaped: see to_qwen35 and from_qwen35.
SAME = {
    "": {"mlp.down.weight": "mlp.down_proj.weight"},
    "attn": {f"mixer.{n}.weight": f"self_attn.{n}.weight" for n in ("k_proj", "v_proj", "o_proj")},
    "gdn": {
        "mixer.qkv_proj.weight": "linear_attn.in_proj_qkv.weight",
        "mixer.out_gate.weight": "linear_attn.in_proj_z.weight",
        "mixer.dt_bias": "linear_attn.dt_bias",
        "mixer.A_log": "linear_attn.A_log",
        "mixer.head_norm.weight": "linear_attn.norm.weight",
        "mixer.o_proj.weight": "linear_attn.out_proj.weight",
    },
}
ZERO_CENTRED = {
    "": {"mixer_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight"},
    "attn": {f"mixer.{n}.weight": f"self_attn.{n}.weight" for n in ("q_norm", "k_norm")},
    "gdn": {},
}


def _renamed(mixer: str) -> list[tuple[str, str, float]]:
    """(baton's name, Qwen3.5's, what Qwen3.5's value adds to baton's) of a layer's renamed weights."""
    same = [(ours, theirs, 0.0) for table in (SAME[""], SAME[mixer]) for ours, theirs in table.items()]
    shifted = [
        (ours, theirs, -1.0) for table in (ZERO_CENTRED[""], ZERO_CENTRED[mixer]) for ours, theirs in table.items()
    ]
    return same + shifted


def _interleave_heads(query: Tensor, gate: Tensor, heads: int) -> Tensor:
    """[H·D, d] and [H·D, d] as Qwen3.5's [H·2D, d]: per head its query rows, then its gate rows."""
    return torch.cat([query.unflatten(0, (heads, -1)), gate.unflatten(0, (heads, -1))], dim=1).flatten(0, 1)


def to_qwen35(cfg: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """baton's state dict renamed and reshaped into ``Qwen3_5ForCausalLM``'s."""
    check_qwen35(cfg)
    out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["norm.weight"] - 1}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["head.weight"]
    for i, mixer in enumerate(cfg.layer_mixers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for our_name, their_name, shift in _renamed(mixer):
            out[theirs + their_name] = state[ours + our_name] + shift if shift else state[ours + our_name]
        gate, up = state[ours + "mlp.gate_up.weight"].chunk(2, dim=0)
        out[theirs + "mlp.gate_proj.weight"], out[theirs + "mlp.up_proj.weight"] = gate, up
        m = ours + "mixer."
        if mixer == "attn":
            out[theirs + "self_attn.q_proj.weight"] = _interleave_heads(
                state[m + "q_proj.weight"], state[m + "gate_proj.weight"], cfg.attn_heads
            )
        else:
            g = theirs + "linear_attn."
            out[g + "in_proj_a.weight"], out[g + "in_proj_b.weight"] = state[m + "gate_proj.weight"].chunk(2, dim=0)
            out[g + "conv1d.weight"] = state[m + "conv_weight"][:, None, :]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def from_qwen35(config: dict, state: dict[str, Tensor]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """A Qwen3.5 text model's ``config.json`` and weights as baton's config and state dict (the
    inverse of :func:`qwen35_config` and :func:`to_qwen35`); what baton cannot compute is
    refused, naming it."""
    if config.get("model_type") != "qwen3_5_text":
        raise UnsupportedExport(
            f"model_type {config.get('model_type')!r}: baton imports Qwen3.5's text model (qwen3_5_text) only "
            "(no vision tower, no experts)"
        )
    if config["linear_num_key_heads"] != config["linear_num_value_heads"]:
        raise UnsupportedExport(
            f"linear_num_value_heads={config['linear_num_value_heads']} over linear_num_key_heads="
            f"{config['linear_num_key_heads']}: baton's Gated DeltaNet has as many key as value heads"
        )
    if config.get("attention_bias"):
        raise UnsupportedExport("attention_bias: baton's attention projections have no bias")
    if config["intermediate_size"] % 64:
        raise UnsupportedExport(
            f"intermediate_size={config['intermediate_size']}: baton's MLP widths are multiples of 64"
        )
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedExport(f"rope_type {rope['rope_type']!r}: baton's rotary is the default one")
    d, types = config["hidden_size"], config["layer_types"]
    mixers = ["attn" if t == "full_attention" else "gdn" for t in types]
    cfg = ModelConfig(
        vocab_size=config["vocab_size"], d_model=d, n_layers=len(types), mixer="gdn",
        layer_pattern=",".join(mixers) if "attn" in mixers else "", n_heads=config["linear_num_key_heads"],
        gdn_head_dim=config["linear_key_head_dim"],
        gdn_expand_v=config["linear_value_head_dim"] / config["linear_key_head_dim"],
        conv_size=config["linear_conv_kernel_dim"], attn_heads=config["num_attention_heads"],
        attn_kv_heads=config["num_key_value_heads"], attn_head_dim=config["head_dim"],
        rotary_fraction=rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.25)),
        rotary_theta=rope.get("rope_theta", 10_000.0), mlp_ratio=config["intermediate_size"] * 3 / (2 * d),
        tie_embeddings=config.get("tie_word_embeddings", False), norm_eps=config["rms_norm_eps"],
    )  # fmt: skip
    try:
        cfg.validate()
    except ValueError as exc:
        raise UnsupportedExport(f"{exc} (what baton's kernels take)") from None
    if cfg.mlp_hidden != config["intermediate_size"]:
        raise UnsupportedExport(f"intermediate_size={config['intermediate_size']}: no baton MLP of that width")
    ours = {"embed.weight": state["model.embed_tokens.weight"], "norm.weight": state["model.norm.weight"] + 1}
    ours["head.weight"] = ours["embed.weight"] if cfg.tie_embeddings else state["lm_head.weight"]
    for i, mixer in enumerate(mixers):
        b, t = f"blocks.{i}.", f"model.layers.{i}."
        for our_name, their_name, shift in _renamed(mixer):
            ours[b + our_name] = state[t + their_name] - shift if shift else state[t + their_name]
        ours[b + "mlp.gate_up.weight"] = torch.cat([state[t + "mlp.gate_proj.weight"], state[t + "mlp.up_proj.weight"]])
        m = b + "mixer."
        if mixer == "attn":
            both = state[t + "self_attn.q_proj.weight"].unflatten(0, (cfg.attn_heads, 2, cfg.attn_head_dim))
            ours[m + "q_proj.weight"], ours[m + "gate_proj.weight"] = both[:, 0].flatten(0, 1), both[:, 1].flatten(0, 1)
        else:
            g = t + "linear_attn."
            ours[m + "gate_proj.weight"] = torch.cat([state[g + "in_proj_a.weight"], state[g + "in_proj_b.weight"]])
            ours[m + "conv_weight"] = state[g + "conv1d.weight"][:, 0, :]
    return cfg, {k: v.detach().clone() for k, v in ours.items()}


def generation_config(cfg: ModelConfig) -> dict:
    """``generation_config.json``: greedy by default. transformers 5's cache for Qwen3.5 cannot
    measure a sequence without a full-attention layer (``get_seq_length`` refuses): a model of
    Gated DeltaNet layers alone generates without the cache (each step runs the whole prefix)."""
    config = {"do_sample": False}
    if "attn" not in cfg.layer_mixers:
        config["use_cache"] = False
    return config


def _write_whole(out_dir: Path, force: bool, write) -> Path:
    """``write(directory)`` into a directory beside ``out_dir``, moved into place when done: a
    failure leaves nothing. A non-empty ``out_dir`` is refused unless ``force``."""
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise CheckpointError(f"{out_dir}: exists and is not empty (--force replaces it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(building)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        building.rename(out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out_dir


def export_hf(cfg: ModelConfig, state: dict[str, Tensor], out_dir: Path, source: str, force: bool = False) -> Path:
    """Write a directory ``AutoModelForCausalLM.from_pretrained`` loads (Qwen3.5's native class):
    ``config.json``, ``generation_config.json`` and ``model.safetensors``."""
    from safetensors.torch import save_file

    config, weights = qwen35_config(cfg), to_qwen35(cfg, state)

    def write(directory: Path) -> None:
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt", "source": source})
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (directory / "generation_config.json").write_text(json.dumps(generation_config(cfg), indent=2) + "\n")

    return _write_whole(out_dir, force, write)


def read_hf(directory: Path) -> tuple[dict, dict[str, Tensor]]:
    """A transformers model directory's ``config.json`` and weights (one safetensors file, or
    shards named by ``model.safetensors.index.json``)."""
    from safetensors.torch import load_file

    config = directory / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{config}: not found (a transformers model directory has it)")
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    files = files or ["model.safetensors"]
    if not all((directory / f).is_file() for f in files):
        raise CheckpointError(f"{directory}: no safetensors weights ({', '.join(files)})")
    state = {}
    for f in files:
        state.update(load_file(str(directory / f)))
    return json.loads(config.read_text()), state


def import_hf(hf_dir: Path, out_dir: Path, force: bool = False) -> Path:
    """A Qwen3.5 text model as a baton model directory: ``model.safetensors``, ``config.json``
    (as ``baton export`` writes them) and ``config.yaml``, a baton config of its model that
    starts training from it (``train.init_from``)."""
    from dataclasses import asdict

    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    cfg, state = from_qwen35(*read_hf(hf_dir))

    def write(directory: Path) -> None:
        weights = {k: v.contiguous() for k, v in state.items()}
        if cfg.tie_embeddings:  # one tensor under two names: safetensors keeps distinct copies
            weights["head.weight"] = weights["head.weight"].clone()
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt", "source": str(hf_dir)})
        (directory / "config.json").write_text(json.dumps({"model": asdict(cfg), "source": str(hf_dir)}, indent=1))
        job = {"model": asdict(cfg), "train": {"init_from": str(out_dir.resolve())}}
        (directory / "config.yaml").write_text(
            f"# {hf_dir} imported: baton train {out_dir / 'config.yaml'}\n" + OmegaConf.to_yaml(job)
        )

    return _write_whole(out_dir, force, write)
