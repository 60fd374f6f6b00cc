"""Corpus build, round trip, and clear errors for broken corpora and inputs."""

import json

import numpy as np
import pytest

from baton.data.build import build_corpus, synthetic_corpus
from baton.data.corpus import Corpus, CorpusError, write_corpus
from baton.data.tokenizer import ByteTokenizer, load_tokenizer


def test_text_and_jsonl_round_trip(tmp_path):
    (tmp_path / "a.txt").write_text("hello wörld")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    corpus = build_corpus([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], str(tmp_path / "c"))
    tok = ByteTokenizer()
    assert corpus.n_docs == 3
    assert [tok.decode(corpus.doc(i)) for i in range(3)] == ["hello wörld", "first", "second"]
    assert all(corpus.doc(i)[-1] == tok.eos_id for i in range(3))
    reopened = Corpus(tmp_path / "c")
    assert reopened.n_tokens == corpus.n_tokens == len("hello wörld".encode()) + len("firstsecond") + 3


def test_bad_jsonl_names_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: expected a JSON object with a 'text' field"):
        build_corpus([str(tmp_path / "bad.jsonl")], str(tmp_path / "c"))
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob("c.tmp-*"))


def test_missing_input_and_existing_output(tmp_path):
    with pytest.raises(CorpusError, match="nope.txt: no such file"):
        build_corpus([str(tmp_path / "nope.txt")], str(tmp_path / "c"))
    write_corpus(tmp_path / "c", [np.arange(5)], 257, "byte")
    with pytest.raises(CorpusError, match="already exists"):
        write_corpus(tmp_path / "c", [np.arange(5)], 257, "byte")


def test_truncated_token_file_is_detected(tmp_path):
    write_corpus(tmp_path / "c", [np.arange(100), np.arange(7)], 257, "byte")
    with open(tmp_path / "c" / "tokens.bin", "r+b") as f:
        f.truncate(50)
    with pytest.raises(CorpusError, match=r"tokens.bin: 50 bytes, but offsets.npy says 107 tokens"):
        Corpus(tmp_path / "c")


def test_missing_corpus_names_meta_file(tmp_path):
    with pytest.raises(CorpusError, match=r"meta.json: not found"):
        Corpus(tmp_path / "nothing")


def test_synthetic_corpus_is_deterministic_and_long_tailed(tmp_path):
    a = synthetic_corpus(tmp_path / "a", 2000, seed=3)
    b = synthetic_corpus(tmp_path / "b", 2000, seed=3)
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    lengths = np.diff(a.offsets)
    assert np.percentile(lengths, 99) > 10 * np.median(lengths)  # a long tail
    text = ByteTokenizer().decode(a.doc(0))
    name = text.split("\n")[0].removeprefix("doc ")
    assert text.rstrip("\n").endswith(f"end {name}")


def test_bpe_corpus_round_trip(tmp_path):
    pytest.importorskip("tokenizers")
    texts = [f"document {i}: the quick brown fox jumps over the lazy dog {i % 7}" for i in range(60)]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    corpus = build_corpus([str(tmp_path / "in.jsonl")], str(tmp_path / "c"), tokenizer="bpe", vocab_size=300)
    tok = load_tokenizer(corpus.path)
    assert corpus.n_docs == 60 and corpus.vocab_size == tok.vocab_size <= 300
    assert tok.decode(corpus.doc(5)[:-1]) == texts[5] and corpus.doc(5)[-1] == tok.eos_id
    assert corpus.doc_len(5) < len(texts[5])  # merges learned: fewer tokens than bytes


def test_running_sums_label_each_digit_with_the_sum_so_far():
    from baton.data.synthetic import running_sums

    tokens, labels = running_sums(np.random.default_rng(0), [5, 3], modulus=3)
    assert len(tokens) == len(labels) == 8 and set(tokens.tolist()) <= {0, 1, 2}
    assert labels.tolist() == [*(np.cumsum(tokens[:5]) % 3), *(np.cumsum(tokens[5:]) % 3)]
