"""On-disk token corpus: one memory-mapped token array plus document offsets.

    DIR/tokens.bin   all documents' tokens back to back (uint16, or uint32 for vocabularies > 65535)
    DIR/offsets.npy  int64 [n_docs + 1]: document i is tokens[offsets[i]:offsets[i+1]]
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
    out = Path(out)
    if out.exists():
        if exist_ok:
            return Corpus(out)
        raise CorpusError(f"{out}: already exists; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        offsets = [0]
        with open(tmp / "tokens.bin", "wb") as f:
            for doc in docs:
                if len(doc) and (doc.min() < 0 or doc.max() >= vocab_size):
                    raise CorpusError(f"document {len(offsets) - 1}: token ids outside [0, {vocab_size})")
                f.write(np.asarray(doc, dtype=dtype).tobytes())
                offsets.append(offsets[-1] + len(doc))
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        meta = dict(
            format=FORMAT_VERSION,
            dtype=np.dtype(dtype).name,
            n_docs=len(offsets) - 1,
            n_tokens=offsets[-1],
            vocab_size=vocab_size,
            tokenizer=tokenizer,
            **extra,
        )
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in attach:
            shutil.copy(f, tmp / Path(f).name)
        try:
            os.replace(tmp, out)
        except OSError:
            if not (exist_ok and out.exists()):
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Corpus(out)
