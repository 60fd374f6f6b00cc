"""Through `baton train`, `baton generate` and `baton eval` as a user runs them: a mixture of two
corpora trains the same documents on 1, 2 and 3 ranks and across a resume at another world
size; TensorBoard gets the logged numbers; the trained model continues prompts and is
evaluated exactly, on one process or two."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from baton.checkpoint import latest_checkpoint
from baton.checkpoint.export import load_model
from baton.data.build import build_corpus, synthetic_corpus
from baton.data.corpus import Corpus
from baton.launch.evaluate import document_batches
from tests.launch.runs import baton_train, jsonl

pytestmark = pytest.mark.runs

STEPS = ["train.steps=4", "train.log_every=2", "train.eval_every=4", "data.tokens_per_batch=1024"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "baton.launch.cli", *args], capture_output=True, text=True)
    assert not check or proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("after")
    sources = [synthetic_corpus(root / name, 300, seed) for name, seed in (("a", 11), ("b", 12))]
    spec = f"data.sources=[{{path: {sources[0].path}, weight: 1, name: a}}, {{path: {sources[1].path}, weight: 3}}]"
    run = baton_train(root / "run", root / "cache", 1, *STEPS, spec, "checkpoint.every=4", "profile.tensorboard=true")
    return root, spec, run, sources


def test_mixture_documents_do_not_depend_on_ranks_or_resumes(mixture):
    root, spec, single, _ = mixture
    split = root / "split"
    baton_train(split, root / "cache", 2, *STEPS, spec, "checkpoint.every=2", "train.stop_at_step=2")
    baton_train(split, root / "cache", 3, *STEPS, spec, "checkpoint.every=2", "resume=auto")
    ours, theirs = jsonl(split / "metrics.jsonl"), jsonl(single / "metrics.jsonl")
    assert [r["doc_ids"] for r in ours] == [r["doc_ids"] for r in theirs] and len(ours) == 4
    assert {s for r in theirs for s, _ in r["doc_ids"]} == {0, 1}  # both sources drawn
    assert set(theirs[-1]["eval_loss_by_source"]) == {"a", "b"}


def test_tensorboard_gets_what_metrics_record(mixture):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    _, _, run, _ = mixture
    board = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    board.Reload()
    records = jsonl(run / "metrics.jsonl")
    for tag in ("loss", "lr", "grad_norm"):  # TensorBoard keeps float32
        events = board.Scalars(tag)
        assert [e.step for e in events] == [r["step"] for r in records]
        assert [e.value for e in events] == pytest.approx([r[tag] for r in records], rel=1e-6)
    assert [e.step for e in board.Scalars("tokens_per_s")] == [2, 4]
    assert board.Scalars("eval_loss/a")[0].value == pytest.approx(records[-1]["eval_loss_by_source"]["a"])


def test_generate_continues_prompts(mixture):
    _, _, run, _ = mixture
    args = ["generate", str(run), "--prompt", "doc ", "--prompt", "recall", "--max-tokens", "30", "--temperature", "0"]
    out = cli(*args).stdout
    assert out == cli(*args).stdout  # greedy: the same text again
    texts = out.split("\n\n")
    assert texts[0].startswith("doc ") and texts[1].startswith("recall")
    empty = cli("generate", str(run.parent / "nothing"), "--prompt", "x", check=False)
    assert empty.returncode == 2 and "config.yaml: config file not found" in empty.stderr


def test_eval_is_exact_and_does_not_depend_on_ranks(mixture):
    _, _, run, sources = mixture
    corpus = sources[1].path
    one = json.loads(cli("eval", str(run), "--data", str(corpus), "--json").stdout)
    two = json.loads(cli("eval", str(run), "--data", str(corpus), "--json", "--world", "2").stdout.splitlines()[-1])
    # The same sums directly: the model's summed loss over every document, batch by batch.
    model, data = load_model(latest_checkpoint(run / "checkpoints")).eval(), Corpus(corpus)
    loss_sum = targets = 0.0
    with torch.no_grad():
        for batch in document_batches(data, 1024, torch.arange(data.n_docs).numpy()):
            loss_sum += model(batch.tokens[None], batch.cu_seqlens, batch.labels[None], loss_chunk=0).item()
            targets += batch.n_targets
    assert one["documents"] == data.n_docs == 300 and one["tokens"] == data.n_tokens
    assert one["loss"] == pytest.approx(loss_sum / targets, rel=1e-6)
    assert one["bits_per_byte"] == pytest.approx(loss_sum / math.log(2) / int(data.doc_bytes.sum()), rel=1e-6)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6) and two["tokens"] == one["tokens"]
    other = cli("eval", str(run), "--data", str(bpe_corpus(run.parent)), check=False)
    assert other.returncode == 2 and "tokenized otherwise than the run's corpus (tokenizer.json sha256" in other.stderr


def bpe_corpus(root):
    pytest.importorskip("tokenizers")
    (root / "bpe.jsonl").write_text("".join(f'{{"text": "doc {i}"}}\n' for i in range(50)))
    return build_corpus([str(root / "bpe.jsonl")], str(root / "bpe"), "bpe", vocab_size=270, progress=False).path
