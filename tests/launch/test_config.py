"""Config loading: presets, overrides, and errors that name the key."""

import pytest

from baton.launch.config import ConfigError, load_config
from tests.conftest import CONFIGS


def test_defaults_are_the_tiny_cpu_preset():
    assert load_config() == load_config(str(CONFIGS / "tiny-cpu.yaml"), ["train.run_dir=runs/default"])


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
        ("parallel.sp.relay=ring", "parallel.sp.relay: must be one of chain, allgather, logscan"),
        ("data.tokens_per_batch=0", "data.tokens_per_batch: must be >= 1"),
        ("model.n_heads=3", "divisible by model.n_heads=3"),
        ("steps", "override 'steps': expected key=value"),
        (["parallel.zero.engine=deepspeed", "checkpoint.async_save=true"], "DeepSpeed writes its checkpoints"),
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


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config("nope.yaml")
