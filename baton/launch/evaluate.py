"""Evaluation: the held-out losses during training, and ``baton eval RUN_DIR --data CORPUS``, a
trained model's loss, perplexity and bits per byte on every document of a corpus.

Documents are packed as training packs them (whole, up to ``data.tokens_per_batch`` tokens a
batch; a longer one alone in its batch, never cropped) and each is read once. Every batch is
computed whole on one rank, as one training process would, so the result does not depend on
the number of ranks (``--world N`` runs it under torchrun; ranks take batches in turn).
Bits per byte divide the summed loss (in bits) by the documents' UTF-8 text bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from baton.config import Config, ConfigError
from baton.data.corpus import Corpus
from baton.data.loader import Batch, PackedLoader, pack
from baton.data.tokenizer import tokenizer_fingerprint
from baton.dist.env import init_distributed, sum_over_ranks
from baton.kernels import kernel_backend
from baton.launch.generate import trained_model
from baton.launch.setup import TrainingData, pick_device, run_tokenizer_fingerprint


@dataclass
class Evaluation:
    loss_sum: float  # nats, over every target token
    targets: int
    text_bytes: int | None  # None where the corpus does not record its texts' sizes
    documents: int
    tokens: int

    @property
    def loss(self) -> float:
        return self.loss_sum / self.targets

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float | None:
        return None if not self.text_bytes else self.loss_sum / math.log(2) / self.text_bytes

    def summary(self) -> str:
        bpb = f"{self.bits_per_byte:.4f}" if self.bits_per_byte is not None else "n/a (no text sizes in the corpus)"
        return (
            f"loss {self.loss:.4f} nats per token, perplexity {self.perplexity:.3f}, bits per byte {bpb}; "
            f"{self.documents} documents, {self.tokens} tokens"
        )


def held_out_losses(
    data: TrainingData, cfg: Config, loss_of: Callable[[Batch], Tensor], stop: Callable[[], str]
) -> dict:
    """During training: the loss on each source's held-out documents (``data.eval_batches``
    batches each) and over all of them: ``eval_loss``, and for a mixture ``eval_loss_by_source``.
    ``loss_of`` gives this rank's share of a batch's loss, divided by its targets; ``stop``
    (a collective) ends early when the job must stop."""
    sums, targets = [], []
    for source in data.sources:
        loader = PackedLoader(source.corpus, cfg.data.tokens_per_batch, cfg.train.seed, source.eval_ids)
        loss_sum = count = 0.0
        for _ in range(cfg.data.eval_batches):
            if stop():  # a long eval must not outlive the allocation
                break
            batch = loader.next_batch()
            loss_sum, count = loss_sum + loss_of(batch).item() * batch.n_targets, count + batch.n_targets
        sums.append(loss_sum)
        targets.append(count)
    sums = sum_over_ranks(sums)  # the batches, and so their targets, are the same on every rank
    result = {"eval_loss": sum(sums) / sum(targets) if sum(targets) else float("nan")}
    if data.mixture:
        result["eval_loss_by_source"] = {s.name: x / n for s, x, n in zip(data.sources, sums, targets) if n}
    return result


def text_bytes(corpus: Corpus, doc_ids: np.ndarray) -> int | None:
    """The documents' text size: recorded at build time, or (a byte corpus) their tokens less
    the end-of-text token."""
    if corpus.doc_bytes is not None:
        return int(corpus.doc_bytes[doc_ids].sum())
    if corpus.meta.get("tokenizer") == "byte":
        return int(sum(corpus.doc_len(int(i)) - 1 for i in doc_ids))
    return None


def document_batches(corpus: Corpus, tokens_per_batch: int, doc_ids: np.ndarray) -> Iterator[Batch]:
    """The documents, in order and each once, packed whole into batches of at most
    ``tokens_per_batch`` tokens (a longer document alone)."""
    docs: list[int] = []
    total = 0
    for i in map(int, doc_ids):
        if docs and total + corpus.doc_len(i) > tokens_per_batch:
            yield pack([corpus.doc(d) for d in docs], docs)
            docs, total = [], 0
        docs.append(i)
        total += corpus.doc_len(i)
    if docs:
        yield pack([corpus.doc(d) for d in docs], docs)


@torch.no_grad()
def evaluate_corpus(
    run_dir: Path, data: str, checkpoint: str | None = None, overrides: tuple[str, ...] = (), max_docs: int = 0
) -> Evaluation:
    """Evaluate the run's model (its newest checkpoint, or ``checkpoint``) on the corpus at
    ``data`` (its first ``max_docs`` documents; 0: all)."""
    cfg, model, _ = trained_model(run_dir, checkpoint, overrides)
    device, autocast = pick_device(cfg)
    env = init_distributed(device, cfg.dist.init_timeout_s, cfg.dist.timeout_s)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    model = model.to(device)
    corpus = Corpus(data)
    if tokenizer_fingerprint(corpus.path) != run_tokenizer_fingerprint(cfg):
        raise ConfigError(
            f"{data}: tokenized otherwise than the run's corpus ({tokenizer_fingerprint(corpus.path)} vs "
            f"{run_tokenizer_fingerprint(cfg)}): build it with the run's tokenizer"
        )
    doc_ids = np.arange(min(corpus.n_docs, max_docs) if max_docs else corpus.n_docs)
    loss_sum = targets = tokens = 0.0
    context = torch.autocast(device.type, dtype=autocast) if autocast else nullcontext()
    for i, batch in enumerate(document_batches(corpus, cfg.data.tokens_per_batch, doc_ids)):
        if i % env.world_size != env.rank:
            continue
        with context, kernel_backend(cfg.train.kernels):
            loss = model(batch.tokens[None].to(device), batch.cu_seqlens, batch.labels[None].to(device),
                         cfg.train.loss_chunk_tokens)  # fmt: skip
        loss_sum, targets, tokens = loss_sum + loss.item(), targets + batch.n_targets, tokens + batch.n_tokens
    loss_sum, targets, tokens = sum_over_ranks([loss_sum, targets, tokens])
    return Evaluation(loss_sum, int(targets), text_bytes(corpus, doc_ids), len(doc_ids), int(tokens))
