"""Building corpora from real file formats: the same corpus from .txt, .jsonl, .jsonl.gz and
parquet; a given tokenizer.json; several worker processes; bad inputs named in one line."""

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from baton.data import readers
from baton.data.build import build_corpus
from baton.data.corpus import CorpusError

TEXTS = [f'document {i}: ünïcode {"x" * (i * 37 % 300)} and "quotes"\nsecond line {i}' for i in range(40)]


def write_inputs(tmp_path):
    """The same documents as .txt files, .jsonl, .jsonl.gz and parquet."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    txt = tmp_path / "txt"
    txt.mkdir()
    for i, text in enumerate(TEXTS):
        (txt / f"{i:03d}.txt").write_text(text)
    lines = "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS))
    (tmp_path / "docs.jsonl").write_text(lines)
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt") as f:
        f.write(lines)
    pq.write_table(pa.table({"id": list(range(40)), "body": TEXTS}), tmp_path / "docs.parquet", row_group_size=7)
    return txt


def same(a, b) -> bool:
    return all(
        (a.path / f).read_bytes() == (b.path / f).read_bytes() for f in ("tokens.bin", "offsets.npy", "bytes.npy")
    )


def test_every_format_gives_the_same_corpus(tmp_path):
    txt = write_inputs(tmp_path)
    base = build_corpus([str(txt)], str(tmp_path / "c-txt"), progress=False)
    assert base.n_docs == 40 and base.doc_bytes.tolist() == [len(t.encode()) for t in TEXTS]
    for name, field in (("docs.jsonl", "text"), ("docs.jsonl.gz", "text"), ("docs.parquet", "body")):
        corpus = build_corpus([str(tmp_path / name)], str(tmp_path / f"c-{name}"), field=field, progress=False)
        assert same(corpus, base), name


def test_two_workers_give_the_same_bytes_as_one(tmp_path, monkeypatch):
    write_inputs(tmp_path)
    monkeypatch.setattr(readers, "UNIT_BYTES", 2000)  # many units: the JSONL is cut in byte ranges
    inputs = [str(tmp_path / n) for n in ("docs.jsonl", "docs.parquet", "docs.jsonl.gz")]
    assert len(readers.plan_units(readers.input_files(inputs[:1]), "text")) > 3
    one = build_corpus(inputs[:1], str(tmp_path / "one"), workers=1, progress=False)
    two = build_corpus(inputs[:1], str(tmp_path / "two"), workers=2, progress=False)
    assert same(one, two) and one.n_docs == 40


def test_a_tokenizer_json_encodes_as_the_library_does(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]", "</s>"])
    tok.train_from_iterator(TEXTS, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    corpus = build_corpus([str(tmp_path / "docs.jsonl")], str(tmp_path / "c"), str(tmp_path / "tokenizer.json"),
                          progress=False)  # fmt: skip
    eot = tok.token_to_id("</s>")  # found by name
    assert corpus.meta["eot_token"] == "</s>" and (corpus.path / "tokenizer.json").is_file()
    for i in (0, 17, 39):
        assert corpus.doc(i).tolist() == tok.encode(TEXTS[i], add_special_tokens=False).ids + [eot]


@pytest.mark.parametrize(
    "case,message",
    [
        ("corrupt", r"bad.jsonl:3: Expecting ':' delimiter"),
        ("field", r"bad.jsonl:2: expected a JSON object with a 'text' field"),
        ("column", r"bad.parquet: no column 'text' \(columns: id, body\); name it with --text-field"),
        ("empty-jsonl", r"empty.jsonl: no documents"),
        ("empty-txt", r"empty.txt: empty file"),
        ("tokenizer", r"--tokenizer nowhere/tokenizer.json: expected byte, bpe, or the path of a tokenizer.json"),
    ],
)
def test_bad_inputs_are_named_with_the_place(tmp_path, case, message):
    inputs, tokenizer = [], "byte"
    if case in ("corrupt", "field"):
        bad = (
            '{"text": "ok"}\n{"text": "fine"}\n{"text" "broken"}\n'
            if case == "corrupt"
            else '{"text": "ok"}\n{"t": 1}\n'
        )
        (tmp_path / "bad.jsonl").write_text(bad)
        inputs = [tmp_path / "bad.jsonl"]
    elif case == "column":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": [1], "body": ["x"]}), tmp_path / "bad.parquet")
        inputs = [tmp_path / "bad.parquet"]
    elif case == "empty-jsonl":
        (tmp_path / "empty.jsonl").write_text("\n\n")
        inputs = [tmp_path / "empty.jsonl"]
    elif case == "empty-txt":
        (tmp_path / "empty.txt").write_text("")
        inputs = [tmp_path / "empty.txt"]
    else:
        (tmp_path / "a.txt").write_text("a")
        inputs, tokenizer = [tmp_path / "a.txt"], "nowhere/tokenizer.json"
    with pytest.raises(CorpusError, match=message):
        build_corpus([str(i) for i in inputs], str(tmp_path / "c"), tokenizer, progress=False)
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob("c.tmp-*"))  # nothing half-written


def test_the_command_stops_with_one_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops}\n')
    cmd = [sys.executable, "-m", "baton.launch.cli", "data", "build", str(tmp_path / "bad.jsonl")]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "c")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"baton: error: {tmp_path / 'bad.jsonl'}:2: ")
    assert np.all([not p.name.startswith("c") for p in tmp_path.iterdir() if p.is_dir()])
