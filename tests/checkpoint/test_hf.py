"""Export to transformers' Qwen3.5 text model (no remote code): a Gated DeltaNet model and a GDN +
attention hybrid, loaded with ``AutoModelForCausalLM.from_pretrained``, give baton's logits
(fp32: 1e-4 relative, the issue's bound; measured ~3e-7, the two sum in other orders) on
random prompts, and greedy ``generate()`` of 32 tokens gives baton's cached decoding's tokens.
Import: a transformers model saved with ``save_pretrained`` gives its logits in baton, and
export → import → export is the identity.
The norms are perturbed from their initial ones, so a convention that differs (zero-centred
weights) shows. flash-linear-attention is not installed here: transformers runs its PyTorch
reference of the delta rule."""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers

from baton.checkpoint.hf import UnsupportedExport, export_hf, from_qwen35, qwen35_config, to_qwen35
from baton.config import ModelConfig
from baton.launch.cli import main
from baton.models.decode import generate
from baton.models.lm import RecurrentLM

SHAPE = dict(
    d_model=64, n_layers=4, n_heads=2, gdn_head_dim=16, chunk_size=16, attn_heads=4, attn_kv_heads=2,
    attn_head_dim=16, rotary_fraction=0.5, rotary_theta=10_000.0,
)  # fmt: skip
MODELS = {"gdn": ("", False), "hybrid": ("gdn,gdn,gdn,attn", True), "hybrid-untied": ("gdn,attn", False)}


def baton_model(name: str) -> RecurrentLM:
    pattern, tied = MODELS[name]
    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(mixer="gdn", layer_pattern=pattern, tie_embeddings=tied, **SHAPE)).eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    model = baton_model(request.param)
    out = export_hf(model.cfg, model.state_dict(), tmp_path_factory.mktemp("hf") / "model", "test")
    return request.param, model, transformers.AutoModelForCausalLM.from_pretrained(out).eval()


def test_the_native_class_computes_batons_logits(exported):
    name, ours, theirs = exported
    assert type(theirs).__name__ == "Qwen3_5ForCausalLM"
    gen = torch.Generator().manual_seed(1)
    for length in (1, 17, 70):
        ids = torch.randint(0, 257, (1, length), generator=gen)
        with torch.no_grad():
            a, b = ours(ids), theirs(ids, use_cache=False).logits
        assert ((a - b).norm() / b.norm()).item() < 1e-4, (name, length)


def test_greedy_generation_gives_batons_tokens(exported):
    """32 tokens, greedy: transformers' generate() with its generation_config.json (a model of
    GDN layers alone generates without the cache, which transformers 5 cannot size for it)."""
    name, ours, theirs = exported
    prompt = torch.randint(0, 257, (11,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = generate(ours, [prompt], max_tokens=32, temperature=0).tokens[0]
        got = theirs.generate(prompt[None], max_new_tokens=32, min_new_tokens=32)[0, len(prompt) :].tolist()
    assert got == want, name


def test_what_the_class_cannot_compute_is_refused_and_nothing_written(tmp_path):
    for cfg, why in (
        (ModelConfig(mixer="gdn", allow_neg_eigval=True, **SHAPE), "beta is a sigmoid in [0, 1]"),
        (ModelConfig(mixer="gla", **SHAPE), "Gated DeltaNet and attention layers only"),
    ):
        with pytest.raises(UnsupportedExport, match=re.escape(why)):
            export_hf(cfg, RecurrentLM(cfg).state_dict(), tmp_path / "out", "test")
        assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.runs
def test_baton_export_format_hf_from_a_run(tmp_path, capsys):
    """The command on a trained run; an existing non-empty directory needs --force (exit 2, one
    line, nothing changed)."""
    run = tmp_path / "run"
    overrides = [
        "model.mixer=gdn", "model.layer_pattern=gdn,attn", "model.d_model=64", "model.n_heads=2",
        "model.gdn_head_dim=16", "model.chunk_size=16", "model.attn_heads=4", "model.attn_head_dim=16",
        "train.steps=2", "checkpoint.every=2", "data.synthetic_docs=300", "data.eval_docs=20",
        f"data.cache_dir={tmp_path / 'data'}", f"train.run_dir={run}",
    ]  # fmt: skip
    assert main(["train", *overrides]) == 0
    out = tmp_path / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["layer_types"] == ["linear_attention", "full_attention"]
    before = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty (--force replaces it)" in err and err.count("\n") == 1
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["export", str(run), "--format", "hf", "--out", str(out), "--force"]) == 0
    assert main(["export", str(tmp_path / "nothing"), "--format", "hf", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def saved_transformers_model(tmp_path, **overrides):
    """A randomly initialised Qwen3.5 text model (its norms perturbed too), saved with
    save_pretrained; its config.json and weights as read back."""
    from safetensors.torch import load_file

    config = dict(
        vocab_size=300, hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, linear_conv_kernel_dim=4, linear_key_head_dim=16,
        linear_value_head_dim=32, linear_num_key_heads=2, linear_num_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(**{**config, **overrides})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(tmp_path)
    return model, json.loads((tmp_path / "config.json").read_text()), load_file(tmp_path / "model.safetensors")


def test_an_imported_model_computes_what_transformers_computes(tmp_path):
    theirs, config, state = saved_transformers_model(tmp_path)
    cfg, weights = from_qwen35(config, state)
    assert cfg.layer_mixers == ["gdn", "gdn", "gdn", "attn"] and cfg.gdn_value_head_dim == 32
    ours = RecurrentLM(cfg).eval()
    ours.load_state_dict(weights)
    ids = torch.randint(0, 300, (1, 50), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = ours(ids), theirs(ids, use_cache=False).logits
    assert ((a - b).norm() / b.norm()).item() < 1e-4


def test_export_import_export_gives_identical_tensors():
    model = baton_model("hybrid-untied")
    first = to_qwen35(model.cfg, model.state_dict())
    cfg, weights = from_qwen35(qwen35_config(model.cfg), first)
    second = to_qwen35(cfg, weights)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(
    "overrides,why",
    [
        ({"linear_num_value_heads": 4}, "baton's Gated DeltaNet has as many key as value heads"),
        ({"intermediate_size": 100}, "baton's MLP widths are multiples of 64"),
        ({"linear_key_head_dim": 24, "linear_value_head_dim": 24}, "model.gdn_head_dim must be a power of two"),
    ],
)
def test_what_baton_cannot_compute_is_not_imported(tmp_path, overrides, why):
    _, config, state = saved_transformers_model(tmp_path, **overrides)
    with pytest.raises(UnsupportedExport, match=re.escape(why)):
        from_qwen35(config, state)
    with pytest.raises(UnsupportedExport, match="qwen3_5_text"):
        from_qwen35({**config, "model_type": "qwen3_5_moe"}, state)


@pytest.mark.ranks
@pytest.mark.runs
def test_an_imported_model_trains_with_sp_like_one_process(tmp_path):
    """`baton import`, then `baton train` from the config.yaml it writes: two steps on one
    process and on 2 ranks sharing each stream (chain relay) give the same losses (1e-5: the
    first from the same imported weights, the second after the same update); started from
    random weights instead, the first loss is another. A config whose model differs from the
    imported one is refused in one line."""
    from tests.launch.runs import baton_train, jsonl

    saved_transformers_model(tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 0
    config = str(tmp_path / "imported" / "config.yaml")
    steps = ["train.steps=2", "train.eval_every=100", "data.tokens_per_batch=1024"]
    losses = {}
    for name, nproc, extra in (
        ("single", 1, []),
        ("sp", 2, ["parallel.sp.size=2", "parallel.sp.relay=chain"]),
        ("random", 1, ["train.init_from=''"]),
    ):
        run = baton_train(tmp_path / name, tmp_path / "data", nproc, *steps, *extra, config=config)
        losses[name] = [r["loss"] for r in jsonl(run / "metrics.jsonl")]
    assert all(abs(a - b) / a < 1e-5 for a, b in zip(losses["single"], losses["sp"], strict=True)), losses
    assert abs(losses["random"][0] - losses["single"][0]) > 1e-3, losses
    assert main(["train", config, "model.d_model=32", f"train.run_dir={tmp_path / 'bad'}"]) == 2
