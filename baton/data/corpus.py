"""On-disk token corpus: one memory-mapped token array plus document offsets.

    DIR/tokens.bin   all documents' tokens back to back (uint16, or uint32 for vocabularies > 65535)
    DIR/offsets.npy  int64 [n_docs + 1]: document i is tokens[offsets[i]:offsets[i+1]]
    DIR/bytes.npy    int64 [n_docs]: each document's text in UTF-8 bytes (for bits per byte;
                     absent from corpora whose documents came as tokens)
    DIR/meta.json    format version, dtype, counts, vocab size, tokenizer

A corpus is written to ``DIR.tmp-*`` and renamed into place, so a crash never leaves a
half-written corpus under the real name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


class CorpusError(ValueError):
    """A corpus directory is missing, incomplete or inconsistent; the message names the file."""


class Corpus:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise CorpusError(f"{meta_path}: not found (build a corpus with `baton data build` or `baton data synth`)")
        try:
            self.meta = json.loads(meta_path.read_text())
            dtype = np.dtype(self.meta["dtype"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorpusError(f"{meta_path}: unreadable corpus metadata ({exc})") from exc
        if self.meta.get("format") != FORMAT_VERSION:
            raise CorpusError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT_VERSION}")
        offsets_path, tokens_path = self.path / "offsets.npy", self.path / "tokens.bin"
        for p in (offsets_path, tokens_path):
            if not p.is_file():
                raise CorpusError(f"{p}: not found")
        self.offsets = np.load(offsets_path, allow_pickle=False)
        n_tokens = int(self.offsets[-1]) if len(self.offsets) else 0
        if tokens_path.stat().st_size != n_tokens * dtype.itemsize:
            raise CorpusError(
                f"{tokens_path}: {tokens_path.stat().st_size} bytes, but offsets.npy says "
                f"{n_tokens} tokens of {dtype} ({n_tokens * dtype.itemsize} bytes)"
            )
        if len(self.offsets) < 2 or self.offsets[0] != 0 or np.any(np.diff(self.offsets) < 0):
            raise CorpusError(f"{offsets_path}: offsets must start at 0, be non-decreasing, and hold >= 1 document")
        self.tokens = np.memmap(tokens_path, dtype=dtype, mode="r", shape=(n_tokens,))
        self.vocab_size = int(self.meta["vocab_size"])
        bytes_path = self.path / "bytes.npy"
        self.doc_bytes = np.load(bytes_path, allow_pickle=False) if bytes_path.is_file() else None
        if self.doc_bytes is not None and len(self.doc_bytes) != self.n_docs:
            raise CorpusError(f"{bytes_path}: {len(self.doc_bytes)} entries for {self.n_docs} documents")

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def doc_len(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def doc(self, i: int, max_tokens: int | None = None) -> np.ndarray:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        if max_tokens is not None:
            end = min(end, start + max_tokens)
        return np.asarray(self.tokens[start:end], dtype=np.int64)


class CorpusWriter:
    """Writes a new corpus at ``out``: into ``out.tmp-*``, renamed into place by :meth:`commit`,
    removed by :meth:`abort`. Use it as a context manager: an exception aborts."""

    def __init__(self, out: str | os.PathLike, vocab_size: int, exist_ok: bool = False) -> None:
        self.out, self.vocab_size, self.exist_ok = Path(out), vocab_size, exist_ok
        if self.out.exists() and not exist_ok:
            raise CorpusError(f"{self.out}: already exists; remove it or choose another --out")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.out.name}.tmp-", dir=self.out.parent))
        self._tokens = open(self.tmp / "tokens.bin", "wb")  # noqa: SIM115 - closed by commit or abort
        self.lengths: list[int] = []
        self.doc_bytes: list[int] | None = []

    def __enter__(self) -> CorpusWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()

    def add(self, tokens: np.ndarray, text_bytes: int | None = None) -> None:
        """One document's token ids, and its text's size in bytes where known."""
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise CorpusError(f"document {len(self.lengths)}: token ids outside [0, {self.vocab_size})")
        self._tokens.write(np.asarray(tokens, dtype=self.dtype).tobytes())
        self.add_lengths([len(tokens)], None if text_bytes is None else [text_bytes])

    def add_part(self, path: Path, lengths: list[int], text_bytes: list[int]) -> None:
        """Documents already written as this corpus's dtype to ``path`` (which is removed)."""
        with open(path, "rb") as part:
            shutil.copyfileobj(part, self._tokens, 2**24)
        path.unlink()
        self.add_lengths(lengths, text_bytes)

    def add_lengths(self, lengths: list[int], text_bytes: list[int] | None) -> None:
        self.lengths += lengths
        if self.doc_bytes is not None and text_bytes is not None:
            self.doc_bytes += text_bytes
        else:
            self.doc_bytes = None

    def commit(self, tokenizer: str, attach: Iterable[Path] = (), **extra) -> Corpus:
        self._tokens.close()
        offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        np.save(self.tmp / "offsets.npy", offsets)
        if self.doc_bytes is not None:
            np.save(self.tmp / "bytes.npy", np.asarray(self.doc_bytes, dtype=np.int64))
        meta = dict(format=FORMAT_VERSION, dtype=self.dtype.name, n_docs=len(self.lengths), n_tokens=int(offsets[-1]),
                    vocab_size=self.vocab_size, tokenizer=tokenizer, **extra)  # fmt: skip
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in attach:
            shutil.copy(f, self.tmp / Path(f).name)
        try:
            os.replace(self.tmp, self.out)
        except OSError:
            if not (self.exist_ok and self.out.exists()):  # another process committed it first
                self.abort()
                raise
            shutil.rmtree(self.tmp)
        return Corpus(self.out)

    def abort(self) -> None:
        self._tokens.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_corpus(
    out: str | os.PathLike,
    docs: Iterable[np.ndarray],
    vocab_size: int,
    tokenizer: str,
    attach: Iterable[Path] = (),
    exist_ok: bool = False,
    **extra,
) -> Corpus:
    """Stream documents (token id arrays) into a new corpus at ``out``; returns it opened.

    ``attach``: files copied into the corpus (a trained tokenizer). With ``exist_ok`` a
    corpus that another process finished first is kept and opened instead.
    """
    if exist_ok and Path(out).exists():
        return Corpus(out)
    with CorpusWriter(out, vocab_size, exist_ok) as writer:
        for doc in docs:
            writer.add(doc)
        return writer.commit(tokenizer, attach, **extra)
