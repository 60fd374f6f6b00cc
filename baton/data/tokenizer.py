"""Tokenizers: bytes (built in, no training) or a byte-level BPE trained with ``tokenizers``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes 0..255 and an end-of-document token 256."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class BPETokenizer:
    """A byte-level BPE from the ``tokenizers`` library, stored as ``tokenizer.json``."""

    EOS = "<|endoftext|>"

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size()
        self.eos_id = self._tok.token_to_id(self.EOS)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, out: Path) -> BPETokenizer:
        try:
            from tokenizers import ByteLevelBPETokenizer
        except ImportError as exc:
            raise SystemExit("tokenizer=bpe needs the 'tokenizers' package: pip install tokenizers") from exc
        trainer = ByteLevelBPETokenizer()
        trainer.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=[cls.EOS])
        trainer.save(str(out))
        return cls(out)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))


def load_tokenizer(corpus_dir: Path) -> Tokenizer:
    meta = json.loads((corpus_dir / "meta.json").read_text())
    if meta["tokenizer"] == "byte":
        return ByteTokenizer()
    return BPETokenizer(corpus_dir / "tokenizer.json")
