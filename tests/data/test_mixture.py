"""Mixtures of corpora: realised proportions, a state that resumes exactly, held-out documents
never drawn, and sources that must share a tokenizer."""

import numpy as np
import pytest

from baton.config import ConfigError, SourceConfig, load_config
from baton.data.build import build_corpus, synthetic_corpus
from baton.data.mixture import MixtureLoader
from baton.launch.setup import training_data


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return [synthetic_corpus(root / f"s{i}", 400, seed=i) for i in range(3)]


def config(corpora, weights):
    cfg = load_config(None, ["data.eval_docs=50", "data.tokens_per_batch=2048", "model.vocab_size=400"])
    cfg.data.sources = [SourceConfig(str(c.path), w) for c, w in zip(corpora, weights)]
    return cfg


def drawn(loader, n_docs: int) -> list:
    """The documents of whole batches, until at least ``n_docs``."""
    ids: list = []
    while len(ids) < n_docs:
        ids += loader.next_batch().doc_ids
    return ids


def test_realised_proportions_follow_the_weights(corpora):
    cfg = config(corpora, [1.0, 2.0, 5.0])
    ids = drawn(training_data(cfg).loader(cfg.data.tokens_per_batch, seed=0), 10_000)[:10_000]
    shares = np.bincount([s for s, _ in ids], minlength=3) / len(ids)
    assert np.abs(shares - np.array([1, 2, 5]) / 8).max() < 0.02, shares


def test_resume_continues_with_the_same_documents(corpora):
    cfg = config(corpora, [1.0, 1.0, 2.0])
    data = training_data(cfg)
    first = data.loader(2048, seed=3)
    head = drawn(first, 1000)
    resumed = data.loader(2048, seed=3)
    resumed.load_state_dict(first.state_dict())
    tail = drawn(resumed, 2000)
    assert head + tail == drawn(data.loader(2048, seed=3), len(head) + len(tail))


def test_held_out_documents_are_never_drawn(corpora):
    cfg = config(corpora, [1.0, 1.0, 1.0])
    data = training_data(cfg)
    ids = drawn(MixtureLoader(data.sources, 2048, seed=1), 4000)
    for s, doc in ids:
        assert doc in set(data.sources[s].train_ids.tolist())
    assert all(len(src.eval_ids) == 50 and src.eval_ids[0] == 350 for src in data.sources)


def test_sources_must_share_a_tokenizer(corpora, tmp_path):
    pytest.importorskip("tokenizers")
    bpes = []
    for name, word in (("bpe", "text"), ("bpe2", "other")):  # two BPEs of one vocabulary size
        (tmp_path / f"{name}.jsonl").write_text("".join(f'{{"text": "{word} number {i}"}}\n' for i in range(80)))
        bpes.append(build_corpus([str(tmp_path / f"{name}.jsonl")], str(tmp_path / name), "bpe", 280, progress=False))
    cfg = config([corpora[0], bpes[0]], [1.0, 1.0])
    with pytest.raises(ConfigError, match=r"data.sources\[1\]: .*bpe was tokenized otherwise than .*s0"):
        training_data(cfg)
    assert bpes[0].vocab_size == bpes[1].vocab_size
    with pytest.raises(ConfigError, match=r"data.sources\[1\]: .*bpe2 was tokenized otherwise than .*bpe \("):
        training_data(config(bpes, [1.0, 1.0]))
    cfg.data.sources[1].weight = 0
    with pytest.raises(ConfigError, match=r"data.sources\[1\].weight: must be > 0, got 0"):
        training_data(cfg)
    both = config(corpora, [1.0, 1.0, 1.0])
    both.data.path = str(corpora[1].path)
    with pytest.raises(ConfigError, match=r"data.path=.*s1 and data.sources: give one"):
        training_data(both)
