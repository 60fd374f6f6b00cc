"""`baton export`: one safetensors file + config that rebuild the trained model exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from baton.checkpoint import complete_checkpoints
from baton.checkpoint.export import load_model_state
from baton.config import ModelConfig
from baton.models.lm import RecurrentLM
from tests.launch.runs import baton_train

pytestmark = pytest.mark.runs


def test_export_rebuilds_the_model(tmp_path):
    run = baton_train(tmp_path / "run", tmp_path / "data", 2, "train.steps=2", "checkpoint.every=2",
                      "parallel.zero.engine=fsdp2")  # fmt: skip
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "baton.launch.cli", "export", str(run), "--out", str(out)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["step"] == 2
    model = RecurrentLM(ModelConfig(**config["model"]))
    model.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    _, saved = load_model_state(complete_checkpoints(run / "checkpoints")[-1])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert not torch.equal(model.embed.weight, RecurrentLM(ModelConfig(**config["model"])).embed.weight)
