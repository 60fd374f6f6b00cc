"""Config loading: presets, overrides, and errors that name the key."""

import pytest

from baton.config import ConfigError, load_config
from baton.launch.cli import main
from tests.conftest import CONFIGS


def test_defaults_are_the_tiny_cpu_preset(capsys):
    assert load_config() == load_config(str(CONFIGS / "tiny-cpu.yaml"))
    # what `baton config` prints with no file is what `baton train` runs with none
    assert main(["config"]) == 0 and main(["config", str(CONFIGS / "tiny-cpu.yaml")]) == 0
    default, preset = capsys.readouterr().out.split("resume: none\n")[:2]
    assert default == preset and "run_dir: runs/default" in default


@pytest.mark.parametrize(
    "argv",
    [
        ["memory", "C", "--world", "2", "model.n_layers=3", "train.steps=5"],
        ["memory", "--world", "2", "C", "model.n_layers=3", "train.steps=5"],
        ["memory", "C", "model.n_layers=3", "--world", "2", "train.steps=5"],
        ["memory", "--world", "2", "model.n_layers=3", "--tokens", "64", "train.steps=5"],
    ],
)
def test_overrides_before_or_after_flags(argv, monkeypatch):
    from baton.launch import cli

    seen = []
    monkeypatch.setattr(cli, "_memory", lambda args: seen.append(cli._config_and_overrides(args)))
    config = str(CONFIGS / "125m.yaml") if "C" in argv else None
    assert main([config if a == "C" else a for a in argv]) == 0
    assert seen == [(config, ["model.n_layers=3", "train.steps=5"])]


def test_unknown_flags_and_stray_words_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["memory", "--world", "2", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["memory", str(CONFIGS / "125m.yaml"), "--world", "2", "stray"])
    assert "unrecognized arguments: stray (overrides are key=value)" in capsys.readouterr().err


def test_overrides_apply_with_types():
    cfg = load_config(None, ["train.steps=7", "model.mixer=ssd", "optim.lr=0.01"])
    assert (cfg.train.steps, cfg.model.mixer, cfg.optim.lr) == (7, "ssd", 0.01)


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.d_modle=64", "model.d_modle: Key 'd_modle' not in 'ModelConfig'"),
        ("train.steps=many", "train.steps: Value 'many'"),
        ("train.dtype=fp16", "train.dtype: must be one of auto, fp32, bf16"),
        ("train.kernels=cuda", "train.kernels: must be one of auto, triton, torch"),
        ("parallel.sp.relay=ring", "parallel.sp.relay: must be one of chain, allgather, logscan, auto"),
        ("parallel.sp.relay_blocks=0", "parallel.sp.relay_blocks: must be in [1, 256], got 0"),
        ("data.tokens_per_batch=0", "data.tokens_per_batch: must be >= 1"),
        ("model.n_heads=3", "must be a multiple of model.n_heads=3"),
        ("model.expand_k=0", "model.expand_k must be > 0, got 0.0"),
        (["model.mixer=ssd", "model.ssd_head_dim=0"], "model.ssd_head_dim must be >= 1, got 0"),
        ("model.mixer=mamba", "model.mixer must be one of gla, ssd, gdn, paragru, paralstm, attn, got 'mamba'"),
        ("model.layer_pattern=gdn,mla", "model.layer_pattern='gdn,mla' names 'mla': each entry must be one of"),
        (
            ["model.layer_pattern=gdn,attn", "model.attn_heads=6", "model.attn_kv_heads=4"],
            "model.attn_heads=6 must be a multiple of model.attn_kv_heads=4",
        ),
        (
            ["model.layer_pattern=ssd,attn", "model.attn_head_dim=20", "model.rotary_fraction=0.25"],
            "model.rotary_fraction=0.25 of model.attn_head_dim=20 rotates 5 dims: rotary pairs dims",
        ),
        (["model.layer_pattern=attn,gdn", "model.gdn_head_dim=40"], "model.gdn_head_dim must be a power of two"),
        (["model.layer_pattern=gdn,attn", "model.rotary_theta=0"], "model.rotary_theta must be > 0"),
        (["model.mixer=paragru", "model.newton_iterations=0"], "model.newton_iterations must be >= 1, got 0"),
        (["model.mixer=paralstm", "model.recurrent_weights=dense"], "model.recurrent_weights='dense': paralstm is"),
        (
            ["model.mixer=paragru", "train.micro_tokens=64", "train.activation_checkpoint=full"],
            "train.micro_tokens=64 with model.mixer=paragru: slices carry a state by composing linear summaries",
        ),
        (["model.mixer=gdn", "model.gdn_head_dim=48"], "model.gdn_head_dim must be a power of two from 16 to 256"),
        (["model.mixer=gdn", "model.gdn_head_dim=512"], "model.gdn_head_dim must be a power of two from 16 to 256"),
        (["model.mixer=gdn", "model.gdn_expand_v=1.3"], "model.gdn_expand_v * model.gdn_head_dim = 83.2 must be a"),
        ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
        ("optim.beta2=1", "optim.beta2: must be in [0, 1), got 1.0"),
        ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio: must be in [0, 1], got 1.5"),
        ("optim.warmup_steps=-3", "optim.warmup_steps: must be >= 0, got -3"),
        ("data.eval_docs=0", "data.eval_docs: must be >= 1, got 0"),
        ("train.stop_at_step=-1", "train.stop_at_step: must be >= 0, got -1"),
        ("profile.straggler_threshold=1", "profile.straggler_threshold: must be > 1, got 1.0"),
        ("dist.timeout_s=0", "dist.timeout_s: must be > 0, got 0.0"),
        ("steps", "override 'steps': expected key=value"),
        (["parallel.zero.engine=deepspeed", "checkpoint.async_save=true"], "DeepSpeed writes its checkpoints"),
        ("train.activation_checkpoint=some", "train.activation_checkpoint: must be one of none, full, mixer"),
        (
            ["train.activation_checkpoint=full", "train.micro_tokens=100"],
            "train.micro_tokens=100 must be a multiple of model.chunk_size=64",
        ),
        ("train.micro_tokens=128", "train.micro_tokens=128 bounds memory by recomputing each slice"),
        (
            ["train.activation_checkpoint=full", "train.micro_tokens=128", "parallel.zero.engine=deepspeed"],
            "train.micro_tokens=128 with DeepSpeed ZeRO stage 3",
        ),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, override if isinstance(override, list) else [override])
    assert message in str(exc.value)


def test_unknown_key_in_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(str(tmp_path / "c.yaml"))


@pytest.mark.parametrize(
    "text,message",
    [
        ("model: [1, 2\n", "not valid YAML (while parsing a flow sequence"),
        ("- model\n- train\n", "expected a mapping of config sections"),
    ],
)
def test_malformed_yaml(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(tmp_path / "c.yaml"))
    assert str(exc.value).startswith(f"{tmp_path / 'c.yaml'}: {message}")


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config("nope.yaml")


def test_baton_config_prints_what_a_run_would_use(tmp_path, capsys):
    args = [str(CONFIGS / "125m.yaml"), "optim.lr=0.001", "parallel.sp.size=2"]
    assert main(["config", *args]) == 0
    (tmp_path / "resolved.yaml").write_text(capsys.readouterr().out)
    assert load_config(str(tmp_path / "resolved.yaml")) == load_config(args[0], args[1:])
    assert main(["config", "optim.lr=0"]) == 2
    assert capsys.readouterr().err == "baton: error: optim.lr: must be > 0, got 0.0\n"


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.layer_pattern=gdn,gdn,gdn,mamba", "model.layer_pattern"),
        ("model.attn_kv_heads=3", "model.attn_heads=4 must be a multiple of model.attn_kv_heads=3"),
        ("model.rotary_fraction=0.1", "model.rotary_fraction=0.1"),
    ],
)
def test_a_bad_hybrid_stops_with_one_line_naming_the_key(override, key, capsys):
    assert main(["train", "configs/tiny-hybrid.yaml", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"baton: error: {key}") and err.count("\n") == 1, err


def test_the_layer_pattern_cycles_over_the_layers():
    cfg = load_config(None, ["model.layer_pattern=gdn, gdn, gdn, attn", "model.n_layers=6", "model.gdn_head_dim=16"])
    assert cfg.model.layer_mixers == ["gdn", "gdn", "gdn", "attn", "gdn", "gdn"]
    assert cfg.model.describe == "gdn,gdn,gdn,attn"
    plain = load_config(None, ["model.mixer=ssd", "model.n_layers=3"]).model
    assert plain.layer_mixers == ["ssd"] * 3 and plain.describe == "ssd"


def test_a_gdn_head_the_kernels_cannot_tile_stops_with_one_line(capsys):
    assert main(["train", "model.mixer=gdn", "model.gdn_head_dim=96"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("baton: error: model.gdn_head_dim must be a power of two") and err.count("\n") == 1
