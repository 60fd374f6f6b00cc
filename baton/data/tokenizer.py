"""Tokenizers: bytes (built in, no training), or any ``tokenizer.json`` of the ``tokenizers``
library: one given, or a byte-level BPE trained here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from baton.data.corpus import CorpusError


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


EOT_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>")


class JSONTokenizer:
    """A tokenizer saved as ``tokenizer.json`` by the ``tokenizers`` library (what Hugging Face
    models ship), ending each document with its end-of-text token: ``eot_token``, or the first
    of :data:`EOT_NAMES` it knows."""

    def __init__(self, path: Path, eot_token: str | None = None) -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise CorpusError(f"{path}: loading a tokenizer.json needs tokenizers: pip install tokenizers") from None
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the library's own parse errors, named
            raise CorpusError(f"{path}: not a tokenizer.json the tokenizers library can load ({exc})") from None
        self.path, self.vocab_size = Path(path), self._tok.get_vocab_size()
        names = [eot_token] if eot_token else EOT_NAMES
        found = [n for n in names if self._tok.token_to_id(n) is not None]
        if not found:
            raise CorpusError(
                f"{path}: no end-of-text token {eot_token!r} in the vocabulary" if eot_token else
                f"{path}: none of {', '.join(EOT_NAMES)} is in the vocabulary; name one with --eot-token"
            )  # fmt: skip
        self.eot_token, self.eos_id = found[0], self._tok.token_to_id(found[0])

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))


def train_bpe(texts: Iterable[str], vocab_size: int, out: Path) -> JSONTokenizer:
    """A byte-level BPE trained on ``texts``, saved to ``out`` (needs ``tokenizers``)."""
    try:
        from tokenizers import ByteLevelBPETokenizer
    except ImportError:
        raise CorpusError("--tokenizer bpe needs the 'tokenizers' package: pip install tokenizers") from None
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=[EOT_NAMES[0]])
    trainer.save(str(out))
    return JSONTokenizer(out, EOT_NAMES[0])


def load_tokenizer(corpus_dir: Path) -> Tokenizer:
    """The tokenizer a corpus was built with."""
    meta = json.loads((corpus_dir / "meta.json").read_text())
    if meta["tokenizer"] == "byte":
        return ByteTokenizer()
    return JSONTokenizer(corpus_dir / "tokenizer.json", meta.get("eot_token", EOT_NAMES[0]))


def tokenizer_fingerprint(corpus_dir: Path) -> str:
    """What tells a corpus's tokenizer from another: ``byte``, or the SHA-256 of its
    tokenizer.json with its end-of-text token (two BPEs of one vocabulary size differ)."""
    meta = json.loads((Path(corpus_dir) / "meta.json").read_text())
    if meta["tokenizer"] == "byte":
        return "byte"
    digest = hashlib.sha256((Path(corpus_dir) / "tokenizer.json").read_bytes()).hexdigest()[:16]
    return f"tokenizer.json sha256 {digest}, end-of-text {meta.get('eot_token', EOT_NAMES[0])}"
