"""What every adapter needs around its own parsing: opening plain or gzip text, naming the table's
columns in schema order, and writing the result (CSV or Parquet by the name's suffix)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO, Iterable

import pandas as pd

from core.errors import InputError
from data.batches import BatchWriter
from data.schema import ID_COLUMNS, LABEL_COLUMNS, TIMESTAMP

WRITERS = (".csv", ".parquet", ".pq")
ROW_GROUP = 500_000


def existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    return path


def open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    """A text stream of a file, gunzipped when it starts with gzip's magic bytes (whatever its name)."""
    with open(path, "rb") as probe:
        zipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding=encoding) if zipped else open(path, encoding=encoding)


def first_line(path: Path, encoding: str = "utf-8") -> str:
    with open_text(path, encoding) as stream:
        return stream.readline().rstrip("\r\n")


def in_schema_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Ids, timestamp and labels first (as data/schema.py names them), feature columns after."""
    head = [c for c in (*ID_COLUMNS, TIMESTAMP, *LABEL_COLUMNS) if c in frame.columns]
    return frame[head + [c for c in frame.columns if c not in head]]


def write_table(chunks: Iterable[pd.DataFrame], out: str | Path) -> tuple[Path, int, int]:
    """Write the table, given as one frame or a stream of chunks (an adapter that converts row by row
    never holds the whole table), in schema order; (path, rows, merchants). data.batches.BatchWriter
    writes it under a temporary name renamed at the end: a failed conversion leaves no file that looks
    finished. Parquet row groups hold at most ROW_GROUP rows."""
    out = Path(out).expanduser()
    if out.suffix.lower() not in WRITERS:
        raise InputError(f"{out}: the output must end in .csv or .parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    merchants: set = set()
    with BatchWriter(out) as writer:
        for chunk in chunks:
            chunk = in_schema_order(chunk)
            for start in range(0, len(chunk), ROW_GROUP):
                writer.write(chunk.iloc[start:start + ROW_GROUP])
            merchants.update(chunk["merchant_id"].unique().tolist())
    return out, writer.rows, len(merchants)
