"""Build a corpus from text: ``.txt`` files (one document each) and ``.jsonl`` files (one
document per line, in the ``text`` field), or the built-in synthetic language."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from baton.data.corpus import Corpus, CorpusError, write_corpus
from baton.data.synthetic import synthetic_documents
from baton.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer


def input_files(inputs: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix in (".txt", ".jsonl"))
        elif item.is_file():
            files.append(item)
        else:
            raise CorpusError(f"{item}: no such file or directory")
    if not files:
        raise CorpusError(f"no .txt or .jsonl files in {[str(i) for i in inputs]}")
    return files


def _jsonl_texts(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CorpusError(f"{path}:{line_no}: expected a JSON object with a 'text' field ({exc})") from exc
            if not isinstance(text, str):
                raise CorpusError(f"{path}:{line_no}: 'text' must be a string, got {type(text).__name__}")
            yield text


def read_documents(files: list[Path]) -> Iterator[str]:
    for path in files:
        try:
            if path.suffix == ".jsonl":
                yield from _jsonl_texts(path)
            else:
                yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{path}: not UTF-8 text ({exc})") from exc


def _tokenize(texts: Iterable[str], tokenizer: Tokenizer, every: int = 10_000) -> Iterator[np.ndarray]:
    start = time.perf_counter()
    for i, text in enumerate(texts, 1):
        yield np.append(tokenizer.encode(text), tokenizer.eos_id)
        if i % every == 0:
            print(f"  tokenised {i} documents ({time.perf_counter() - start:.1f}s)", file=sys.stderr, flush=True)


def build_corpus(inputs: list[str], out: str, tokenizer: str = "byte", vocab_size: int = 8192) -> Corpus:
    files = input_files(inputs)
    if tokenizer == "byte":
        return write_corpus(out, _tokenize(read_documents(files), ByteTokenizer()), ByteTokenizer.vocab_size, "byte")
    if tokenizer != "bpe":
        raise CorpusError(f"tokenizer must be 'byte' or 'bpe', got {tokenizer!r}")
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = Path(tmp) / "tokenizer.json"
        bpe = BPETokenizer.train(read_documents(files), vocab_size, tok_path)
        docs = _tokenize(read_documents(files), bpe)
        return write_corpus(out, docs, bpe.vocab_size, "bpe", attach=[tok_path])


def synthetic_corpus(out: str | Path, n_docs: int, seed: int) -> Corpus:
    """Open the synthetic corpus at ``out``, generating it first if it is not there yet."""
    out = Path(out)
    if not (out / "meta.json").exists():
        print(f"generating the synthetic corpus ({n_docs} documents) in {out}", file=sys.stderr, flush=True)
    docs = _tokenize(synthetic_documents(n_docs, seed), ByteTokenizer())
    return write_corpus(out, docs, ByteTokenizer.vocab_size, "byte", exist_ok=True, synthetic_seed=seed)
