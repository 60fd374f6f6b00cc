"""What a run needs before it builds a model, shared by the trainer and ``baton replay``: the
device and autocast dtype, the corpus, and its split into training and held-out documents."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from baton.config import Config, ConfigError
from baton.data.build import synthetic_corpus
from baton.data.corpus import Corpus
from baton.data.loader import PackedLoader
from baton.data.mixture import MixtureLoader, Source
from baton.data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer, tokenizer_fingerprint
from baton.kernels.backend import TRITON
from baton.kernels.common import TRITON_CHUNK_SIZES


def pick_device(cfg: Config) -> tuple[torch.device, torch.dtype | None]:
    """The device (``train.device``) and the autocast dtype (``train.dtype``; None: fp32),
    checked against the kernels the run will use (``train.kernels``, ``model.chunk_size``)."""
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda") if cuda else torch.device("cpu")
    if cfg.train.kernels == "triton" and not TRITON.is_available(device)[0]:
        raise ConfigError(f"train.kernels=triton: {TRITON.is_available(device)[1]}")
    if uses_triton(cfg, device) and cfg.model.chunk_size not in TRITON_CHUNK_SIZES:
        sizes = ", ".join(map(str, TRITON_CHUNK_SIZES))
        raise ConfigError(f"model.chunk_size: the Triton kernels need one of {sizes}, got {cfg.model.chunk_size}")
    bf16 = cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and cuda)
    return device, torch.bfloat16 if bf16 else None


def uses_triton(cfg: Config, device: torch.device) -> bool:
    """Whether the run's kernels are the Triton ones (else the PyTorch references)."""
    return cfg.train.kernels == "triton" or (cfg.train.kernels == "auto" and device.type == "cuda")


def keep_compiled_code(cfg: Config, device: torch.device, run_dir: Path) -> None:
    """Triton's compiled kernels go to the run directory where Triton kernels run (and the
    environment names no other place), so that a restart, also on fresh nodes of the same GPU
    model, loads them instead of compiling again. Triton keys them by source, version and
    device, and writes each file whole (a rename), so ranks and nodes can share the directory.
    (Inductor's compiled graphs stay in its own cache, by default on the node's /tmp: it takes
    file locks, which shared file systems do not all honour.)"""
    if uses_triton(cfg, device):
        os.environ.setdefault("TRITON_CACHE_DIR", str(run_dir / "compiled" / "triton"))


def open_corpus(cfg: Config) -> Corpus:
    """``data.path``, or the synthetic corpus (generated on first use into ``data.cache_dir``)."""
    if cfg.data.path == "synthetic":
        path = Path(cfg.data.cache_dir) / f"synthetic-n{cfg.data.synthetic_docs}-seed{cfg.train.seed}"
        return synthetic_corpus(path, cfg.data.synthetic_docs, cfg.train.seed)
    return Corpus(cfg.data.path)


def _source(cfg: Config, corpus: Corpus, weight: float, name: str, key: str) -> Source:
    """A corpus as a source: checked against the model, its last ``data.eval_docs`` held out."""
    if corpus.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary of {corpus.path} "
            f"({corpus.vocab_size})"
        )
    if corpus.n_docs <= cfg.data.eval_docs:
        raise ConfigError(
            f"{key}: data.eval_docs={cfg.data.eval_docs} leaves no training documents in {corpus.path} "
            f"({corpus.n_docs} documents)"
        )
    n_train = corpus.n_docs - cfg.data.eval_docs
    return Source(name or corpus.path.name, corpus, weight, np.arange(n_train), np.arange(n_train, corpus.n_docs))


@dataclass
class TrainingData:
    """A run's documents: one corpus (``data.path``) or a mixture (``data.sources``)."""

    sources: list[Source]
    mixture: bool

    def loader(self, tokens_per_batch: int, seed: int) -> PackedLoader | MixtureLoader:
        """The training documents' batches, from the start (``load_state_dict`` moves on)."""
        if not self.mixture:
            only = self.sources[0]
            return PackedLoader(only.corpus, tokens_per_batch, seed, only.train_ids)
        return MixtureLoader(self.sources, tokens_per_batch, seed)

    def describe(self) -> str:
        if not self.mixture:
            corpus = self.sources[0].corpus
            return f"corpus {corpus.path} ({corpus.n_docs} docs, {corpus.n_tokens} tokens)"
        total = sum(s.weight for s in self.sources)
        parts = [f"{s.name} ({s.weight / total:.0%}, {s.corpus.n_docs} docs)" for s in self.sources]
        return "mixture of " + ", ".join(parts)


def training_data(cfg: Config) -> TrainingData:
    """The run's corpora, checked: every source must share one tokenizer."""
    if not cfg.data.sources:
        return TrainingData([_source(cfg, open_corpus(cfg), 1.0, "", "data.path")], mixture=False)
    if cfg.data.path != "synthetic":
        raise ConfigError(f"data.path={cfg.data.path} and data.sources: give one (a corpus, or a mixture of them)")
    sources = []
    for i, spec in enumerate(cfg.data.sources):
        key = f"data.sources[{i}]"
        if spec.weight <= 0:
            raise ConfigError(f"{key}.weight: must be > 0, got {spec.weight}")
        if not spec.path:
            raise ConfigError(f"{key}.path: a corpus directory is needed")
        sources.append(_source(cfg, Corpus(spec.path), spec.weight, spec.name, key))
    first = tokenizer_fingerprint(sources[0].corpus.path)
    for i, source in enumerate(sources[1:], 1):
        if tokenizer_fingerprint(source.corpus.path) != first:
            raise ConfigError(
                f"data.sources[{i}]: {source.corpus.path} was tokenized otherwise than {sources[0].corpus.path} "
                f"({tokenizer_fingerprint(source.corpus.path)} vs {first}): a mixture needs one tokenizer"
            )
    return TrainingData(sources, mixture=True)


def checkpoint_root(cfg: Config, run_dir: Path) -> Path:
    """Where the checkpoints of the run in ``run_dir`` live: ``checkpoint.dir``, or
    ``run_dir/checkpoints``."""
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(run_dir) / "checkpoints"


def run_corpus(cfg: Config) -> Path | None:
    """The corpus directory whose tokenizer a run trained with (None: the synthetic language,
    bytes); a mixture's first source."""
    path = cfg.data.sources[0].path if cfg.data.sources else cfg.data.path
    if path == "synthetic":
        return None
    if not (Path(path) / "meta.json").is_file():
        raise ConfigError(f"{path}: not a corpus directory (the run's tokenizer is read from the corpus it trained on)")
    return Path(path)


def run_tokenizer(cfg: Config) -> Tokenizer:
    """The tokenizer of a run's corpus."""
    corpus = run_corpus(cfg)
    return ByteTokenizer() if corpus is None else load_tokenizer(corpus)


def run_tokenizer_fingerprint(cfg: Config) -> str:
    corpus = run_corpus(cfg)
    return "byte" if corpus is None else tokenizer_fingerprint(corpus)
