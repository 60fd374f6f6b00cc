"""Building a corpus from parquet: MB/s of input with 1 and 2 worker processes (CPU).

    python bench/data_build.py [--mb 64] [--workers 1 2]

Writes a parquet file of synthetic-language documents (row groups of 2,000 documents, about
``--mb`` MB of text) and builds it with the byte tokenizer and with a byte-level BPE
tokenizer.json (trained on a sample first, not timed), each with every worker count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from baton.data.build import build_corpus
from baton.data.synthetic import synthetic_documents
from baton.data.tokenizer import train_bpe


def write_parquet(path: Path, megabytes: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts, size = [], 0
    for text in synthetic_documents(10**9, seed=0):
        texts.append(text)
        size += len(text.encode())
        if size >= megabytes * 2**20:
            break
    pq.write_table(pa.table({"text": texts}), path, row_group_size=2000)
    return size


def main() -> None:
    # Here, not at the top: the build's worker processes are spawned, and import this module
    # again; ``common`` imports torch, a second of start-up per worker that ``baton data build``
    # (whose workers import only the data modules) does not pay.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import print_table, write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        size = write_parquet(tmp / "docs.parquet", args.mb)
        bpe = train_bpe(synthetic_documents(5000, seed=1), 4096, tmp / "tokenizer.json")
        for name, tokenizer in (("byte", "byte"), ("bpe tokenizer.json", str(bpe.path))):
            base = None
            for workers in args.workers:
                out = tmp / f"c-{len(rows)}"
                start = time.perf_counter()
                corpus = build_corpus([str(tmp / "docs.parquet")], str(out), tokenizer, workers=workers, progress=False)
                seconds = time.perf_counter() - start
                rate = size / 2**20 / seconds
                base = base or rate
                rows.append({"tokenizer": name, "workers": workers, "MB": round(size / 2**20, 1),
                             "documents": corpus.n_docs, "seconds": round(seconds, 2), "MB_s": round(rate, 1),
                             "speedup": round(rate / base, 2)})  # fmt: skip
                print_table(rows[-1:], list(rows[-1]))
    print()
    print_table(rows, list(rows[0]))
    write_json("data_build", rows, input="parquet, synthetic language")


if __name__ == "__main__":
    main()
