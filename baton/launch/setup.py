"""What a run needs before it builds a model, shared by the trainer and ``baton replay``: the
device and autocast dtype, the corpus, and its split into training and held-out documents."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from baton.data.build import synthetic_corpus
from baton.data.corpus import Corpus
from baton.kernels.common import TRITON_CHUNK_SIZES
from baton.launch.config import Config, ConfigError


def pick_device(cfg: Config) -> tuple[torch.device, torch.dtype | None]:
    """The device (``train.device``) and the autocast dtype (``train.dtype``; None: fp32),
    checked against the kernels the run will use (``train.kernels``, ``model.chunk_size``)."""
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda") if cuda else torch.device("cpu")
    if cfg.train.kernels == "triton" and not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("train.kernels: triton needs a CUDA device (or TRITON_INTERPRET=1 to interpret on CPU)")
    triton = cfg.train.kernels == "triton" or (cfg.train.kernels == "auto" and cuda)
    if triton and cfg.model.chunk_size not in TRITON_CHUNK_SIZES:
        sizes = ", ".join(map(str, TRITON_CHUNK_SIZES))
        raise ConfigError(f"model.chunk_size: the Triton kernels need one of {sizes}, got {cfg.model.chunk_size}")
    bf16 = cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and cuda)
    return device, torch.bfloat16 if bf16 else None


def open_corpus(cfg: Config) -> Corpus:
    """``data.path``, or the synthetic corpus (generated on first use into ``data.cache_dir``)."""
    if cfg.data.path == "synthetic":
        path = Path(cfg.data.cache_dir) / f"synthetic-n{cfg.data.synthetic_docs}-seed{cfg.train.seed}"
        corpus = synthetic_corpus(path, cfg.data.synthetic_docs, cfg.train.seed)
    else:
        corpus = Corpus(cfg.data.path)
    if corpus.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary of {corpus.path} "
            f"({corpus.vocab_size})"
        )
    if corpus.n_docs <= cfg.data.eval_docs:
        raise ConfigError(
            f"data.eval_docs={cfg.data.eval_docs} leaves no training documents in {corpus.path} "
            f"({corpus.n_docs} documents)"
        )
    return corpus


def document_split(cfg: Config, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out document ids: the last ``data.eval_docs`` documents are held out."""
    n_train = corpus.n_docs - cfg.data.eval_docs
    return np.arange(n_train), np.arange(n_train, corpus.n_docs)
