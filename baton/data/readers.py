"""Input files as units of work a process can read alone, and the documents in each.

- ``.txt``: one document per file; a unit is a group of files.
- ``.jsonl``: one document per line, in a string field (``text`` by default); a unit is a range
  of the file's bytes between line starts (blank lines are skipped).
- ``.jsonl.gz``: the same, compressed; a unit is the whole file (gzip cannot be entered midway).
- ``.parquet``: one document per row, in a string column; a unit is a row group (``pyarrow``).

Units depend on the inputs alone (their sizes and row groups), so the corpus built from them
is the same whatever the number of workers. A problem stops the build naming the file and
the line or row.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from baton.data.corpus import CorpusError

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
UNIT_BYTES = 16 * 2**20  # about this much input per unit


def kind_of(path: Path) -> str | None:
    name = path.name
    return next((s for s in (".jsonl.gz", ".jsonl", ".parquet", ".txt") if name.endswith(s)), None)


def input_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The files named, and those under the directories named (sorted), of a known kind."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and kind_of(p))
        elif item.is_file():
            if kind_of(item) is None:
                raise CorpusError(f"{item}: not a {', '.join(SUFFIXES)} file")
            files.append(item)
        else:
            raise CorpusError(f"{item}: no such file or directory")
    if not files:
        raise CorpusError(f"no {', '.join(SUFFIXES)} files in {[str(i) for i in inputs]}")
    return files


@dataclass(frozen=True)
class Unit:
    kind: str
    paths: tuple[Path, ...]  # several .txt files, else one file
    start: int = 0  # .jsonl: first byte; .parquet: row group
    stop: int = -1  # .jsonl: byte after the last (-1: the end)
    first_row: int = 0  # .parquet: the group's first row in the file
    size: int = 0  # input bytes, for progress


def plan_units(files: list[Path], field: str) -> list[Unit]:
    """Every file's units, in input order."""
    units: list[Unit] = []
    texts: list[Path] = []
    for path in files + [None]:
        kind = kind_of(path) if path is not None else None
        if texts and (kind != ".txt" or sum(p.stat().st_size for p in texts) >= UNIT_BYTES):
            units.append(Unit(".txt", tuple(texts), size=sum(p.stat().st_size for p in texts)))
            texts = []
        if kind == ".txt":
            texts.append(path)
        elif kind == ".jsonl":
            units += _jsonl_units(path)
        elif kind == ".jsonl.gz":
            units.append(Unit(kind, (path,), size=path.stat().st_size))
        elif kind == ".parquet":
            units += _parquet_units(path, field)
    return units


def _jsonl_units(path: Path) -> list[Unit]:
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for i in range(1, -(-size // UNIT_BYTES)):
            f.seek(max(i * UNIT_BYTES, cuts[-1]))
            f.readline()  # to the next line start
            if f.tell() < size:
                cuts.append(f.tell())
    cuts.append(size)
    return [Unit(".jsonl", (path,), a, b, size=b - a) for a, b in zip(cuts[:-1], cuts[1:])]


def _parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(f"{path}: reading parquet needs pyarrow: pip install pyarrow (or baton[data])") from None
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - any reader error is a bad input, named
        raise CorpusError(f"{path}: not a readable parquet file ({exc})") from None


def _parquet_units(path: Path, field: str) -> list[Unit]:
    meta = _parquet(path).metadata
    if field not in meta.schema.names:
        raise CorpusError(
            f"{path}: no column {field!r} (columns: {', '.join(meta.schema.names)}); name it with --text-field"
        )
    units, row = [], 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        units.append(Unit(".parquet", (path,), g, first_row=row, size=group.total_byte_size))
        row += group.num_rows
    return units


def _jsonl_line(path: Path, offset: int) -> int:
    """The line number of the line starting at byte ``offset``."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def _from_json(line: bytes, field: str) -> str | None:
    """The document of a JSONL line; None for a blank line; ValueError for anything else."""
    if not line.strip():
        return None
    record = json.loads(line)
    if not isinstance(record, dict) or field not in record:
        raise ValueError(f"expected a JSON object with a {field!r} field")
    if not isinstance(record[field], str):
        raise ValueError(f"{field!r} must be a string, got {type(record[field]).__name__}")
    return record[field]


def _jsonl_documents(unit: Unit, field: str) -> Iterator[str]:
    path = unit.paths[0]
    opener = gzip.open if unit.kind == ".jsonl.gz" else open
    with opener(path, "rb") as f:
        f.seek(unit.start)
        offset = unit.start
        for number, line in enumerate(f, 1):
            if unit.stop >= 0 and offset >= unit.stop:
                break
            try:
                text = _from_json(line, field)
            except (ValueError, UnicodeDecodeError) as exc:
                where = number if unit.kind == ".jsonl.gz" else _jsonl_line(path, offset)
                raise CorpusError(f"{path}:{where}: {exc}") from None
            offset += len(line)
            if text is not None:
                yield text


def _parquet_documents(unit: Unit, field: str) -> Iterator[str]:
    path = unit.paths[0]
    column = _parquet(path).read_row_group(unit.start, columns=[field]).column(field)
    for i, value in enumerate(column.to_pylist()):
        if not isinstance(value, str):
            raise CorpusError(f"{path}: row {unit.first_row + i}: {field!r} is {type(value).__name__}, not a string")
        yield value


def _text_documents(unit: Unit) -> Iterator[str]:
    for path in unit.paths:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{path}: not UTF-8 text ({exc})") from None
        if not text:
            raise CorpusError(f"{path}: empty file")
        yield text


def unit_documents(unit: Unit, field: str) -> Iterator[str]:
    """The documents of a unit, in order."""
    if unit.kind == ".txt":
        return _text_documents(unit)
    if unit.kind == ".parquet":
        return _parquet_documents(unit, field)
    return _jsonl_documents(unit, field)
