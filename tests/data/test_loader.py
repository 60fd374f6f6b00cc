"""Packed batches: whole documents, correct labels, a resumable rank-independent cursor."""

import numpy as np

from baton.data.corpus import write_corpus
from baton.data.loader import IGNORE, PackedLoader


def make_corpus(tmp_path, n=50, seed=0):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 200, size=int(rng.integers(1, 40))) for _ in range(n)]
    return write_corpus(tmp_path / "c", docs, 257, "byte"), docs


def test_batches_hold_whole_documents_with_in_document_labels(tmp_path):
    corpus, docs = make_corpus(tmp_path)
    batch = PackedLoader(corpus, 64, seed=0).next_batch()
    assert batch.n_tokens <= 64
    for doc_id, a, b in zip(batch.doc_ids, batch.cu_seqlens[:-1], batch.cu_seqlens[1:]):
        assert np.array_equal(batch.tokens[a:b].numpy(), docs[doc_id])
        assert np.array_equal(batch.labels[a : b - 1].numpy(), docs[doc_id][1:])
        assert batch.labels[b - 1] == IGNORE


def test_every_document_once_per_epoch(tmp_path):
    corpus, _ = make_corpus(tmp_path)
    loader = PackedLoader(corpus, 64, seed=1)
    seen = []
    while loader.cursor < corpus.n_docs:
        seen += loader.next_batch().doc_ids
    assert sorted(seen[: corpus.n_docs]) == list(range(corpus.n_docs))


def test_resume_from_cursor_continues_exactly(tmp_path):
    corpus, _ = make_corpus(tmp_path)
    loader = PackedLoader(corpus, 48, seed=2)
    straight = [loader.next_batch().doc_ids for _ in range(12)]
    first = PackedLoader(corpus, 48, seed=2)
    for _ in range(5):
        first.next_batch()
    resumed = PackedLoader(corpus, 48, seed=2)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.next_batch().doc_ids for _ in range(7)] == straight[5:]


def test_long_document_is_cropped_to_budget(tmp_path):
    corpus = write_corpus(tmp_path / "c", [np.arange(100) % 200], 257, "byte")
    batch = PackedLoader(corpus, 30, seed=0).next_batch()
    assert batch.n_tokens == 30 and batch.n_targets == 29
