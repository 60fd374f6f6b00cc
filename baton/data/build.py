"""Build a corpus from text files (``readers.py``: .txt, .jsonl, .jsonl.gz, parquet), tokenized
by bytes, by a byte-level BPE trained here, or by a given ``tokenizer.json``; or the built-in
synthetic language.

The inputs are cut into units (``readers.plan_units``) that worker processes tokenize
independently, each into a part file of the corpus's dtype; the parts are appended in unit
order, so the corpus is byte-identical whatever the number of workers. It is written under a
temporary name and renamed when complete (``corpus.CorpusWriter``).
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from baton.data.corpus import Corpus, CorpusError, CorpusWriter
from baton.data.readers import Unit, input_files, plan_units, unit_documents
from baton.data.synthetic import synthetic_documents
from baton.data.tokenizer import ByteTokenizer, JSONTokenizer, Tokenizer, train_bpe
from baton.progress import Progress


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer as a worker process loads it: bytes, or a ``tokenizer.json``."""

    path: str | None = None  # None: bytes
    eot_token: str | None = None

    def load(self) -> Tokenizer:
        return ByteTokenizer() if self.path is None else JSONTokenizer(Path(self.path), self.eot_token)


@dataclass(frozen=True)
class Job:
    unit: Unit
    tokenizer: TokenizerSpec
    field: str
    part: Path  # where the unit's tokens go
    dtype: str


_tokenizers: dict[TokenizerSpec, Tokenizer] = {}  # per process: each worker loads it once


def tokenize_unit(job: Job) -> tuple[list[int], list[int]]:
    """Tokenize one unit into ``job.part`` (each document ends with the end-of-text token);
    its documents' lengths in tokens and in text bytes."""
    tokenizer = _tokenizers.get(job.tokenizer) or _tokenizers.setdefault(job.tokenizer, job.tokenizer.load())
    eos = np.array([tokenizer.eos_id])
    pieces, lengths, sizes = [], [], []
    for text in unit_documents(job.unit, job.field):
        ids = tokenizer.encode(text)
        pieces += [ids, eos]
        lengths.append(len(ids) + 1)
        sizes.append(len(text.encode("utf-8")))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    Path(job.part).write_bytes(tokens.astype(job.dtype).tobytes())  # one write: a unit is ~16 MB of text
    return lengths, sizes


def _results(jobs: list[Job], workers: int) -> Iterator[tuple[list[int], list[int]]]:
    """Each job's result, in order, from ``workers`` processes (or this one)."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(tokenize_unit, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(tokenize_unit, jobs)


def _tokenizer(kind: str, files: list[Path], field: str, vocab_size: int, eot: str | None, scratch: str):
    """The tokenizer spec, its name in the corpus's metadata, and files to keep beside it."""
    if kind == "byte":
        return TokenizerSpec(), "byte", []
    if kind == "bpe":
        path = Path(scratch) / "tokenizer.json"
        texts = (t for u in plan_units(files, field) for t in unit_documents(u, field))
        trained = train_bpe(texts, vocab_size, path)
        return TokenizerSpec(str(path), trained.eot_token), "bpe", [path]
    if not Path(kind).is_file():
        raise CorpusError(f"--tokenizer {kind}: expected byte, bpe, or the path of a tokenizer.json")
    return TokenizerSpec(kind, eot), "tokenizer.json", [Path(kind)]


def _write_parts(writer: CorpusWriter, jobs: list[Job], workers: int, progress: bool) -> Counter:
    """Every job's part appended to the corpus, in order, with a progress line; the documents
    each input file gave."""
    docs, total, start = Counter(), sum(j.unit.size for j in jobs) / 2**20, time.perf_counter()
    bar, done, tokens = Progress(len(jobs), enabled=progress), 0, 0
    for i, (job, (lengths, sizes)) in enumerate(zip(jobs, _results(jobs, workers)), 1):
        writer.add_part(job.part, lengths, sizes)
        docs[job.unit.paths[0]] += len(lengths)
        done, tokens = done + job.unit.size / 2**20, tokens + sum(lengths)
        rate = done / max(time.perf_counter() - start, 1e-9)
        bar.update(i, f"{len(writer.lengths)} documents, {tokens} tokens, {rate:.1f} MB/s of {total:.1f} MB")
    bar.close()
    return docs


def build_corpus(
    inputs: list[str],
    out: str,
    tokenizer: str = "byte",
    vocab_size: int = 8192,
    workers: int = 1,
    field: str = "text",
    eot_token: str | None = None,
    progress: bool = True,
) -> Corpus:
    """Tokenize ``inputs`` (files or directories) into a new corpus at ``out``, in ``workers``
    processes; ``tokenizer``: byte, bpe (trained here, ``vocab_size``) or a tokenizer.json."""
    files = input_files(inputs)
    units = plan_units(files, field)
    with tempfile.TemporaryDirectory() as scratch:
        spec, name, attach = _tokenizer(tokenizer, files, field, vocab_size, eot_token, scratch)
        loaded = spec.load()
        with CorpusWriter(out, loaded.vocab_size) as writer:
            parts = [writer.tmp / f"part-{i:06d}.bin" for i in range(len(units))]
            jobs = [Job(unit, spec, field, part, writer.dtype.name) for unit, part in zip(units, parts)]
            docs = _write_parts(writer, jobs, workers, progress)
            empty = [f for f in files if not f.name.endswith(".txt") and docs[f] == 0]
            if empty:
                raise CorpusError(f"{empty[0]}: no documents")
            eot = {"eot_token": loaded.eot_token} if isinstance(loaded, JSONTokenizer) else {}
            return writer.commit(name, attach, **eot)


def synthetic_corpus(out: str | Path, n_docs: int, seed: int) -> Corpus:
    """Open the synthetic corpus at ``out``, generating it first if it is not there yet."""
    out = Path(out)
    if (out / "meta.json").exists():
        return Corpus(out)
    print(f"generating the synthetic corpus ({n_docs} documents) in {out}", file=sys.stderr, flush=True)
    tokenizer = ByteTokenizer()
    with CorpusWriter(out, ByteTokenizer.vocab_size, exist_ok=True) as writer:
        for text in synthetic_documents(n_docs, seed):
            writer.add(np.append(tokenizer.encode(text), tokenizer.eos_id), len(text.encode("utf-8")))
        return writer.commit("byte", synthetic_seed=seed)
