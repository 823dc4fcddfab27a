"""What every adapter needs around its own parsing: opening plain or gzip text, naming the table's
columns in schema order, and writing the result all at once (CSV or Parquet by the name's suffix)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import IO, Iterable

import pandas as pd

from core.errors import InputError
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
    never holds the whole table), in schema order; (path, rows, merchants). Written under a temporary
    name and renamed at the end: a failed conversion leaves no file that looks finished."""
    out = Path(out).expanduser()
    if out.suffix.lower() not in WRITERS:
        raise InputError(f"{out}: the output must end in .csv or .parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    rows, merchants = 0, set()
    try:
        with (_CsvWriter(tmp) if out.suffix.lower() == ".csv" else _ParquetWriter(tmp)) as writer:
            for chunk in chunks:
                chunk = in_schema_order(chunk)
                writer.write(chunk)
                rows += len(chunk)
                merchants.update(chunk["merchant_id"].unique().tolist())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out, rows, len(merchants)


class _CsvWriter:
    def __init__(self, path: Path) -> None:
        self.path, self.started = path, False

    def __enter__(self) -> "_CsvWriter":
        return self

    def write(self, chunk: pd.DataFrame) -> None:
        chunk.to_csv(self.path, index=False, mode="a" if self.started else "w", header=not self.started)
        self.started = True

    def __exit__(self, *exc: object) -> None:
        return None


class _ParquetWriter:
    """Row groups of at most ROW_GROUP rows; the schema is the first chunk's."""

    def __init__(self, path: Path) -> None:
        self.path, self.writer, self.schema = path, None, None

    def __enter__(self) -> "_ParquetWriter":
        return self

    def write(self, chunk: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            self.schema = pa.Schema.from_pandas(chunk, preserve_index=False)
            self.writer = pq.ParquetWriter(self.path, self.schema)
        for start in range(0, len(chunk), ROW_GROUP):
            part = chunk.iloc[start:start + ROW_GROUP]
            self.writer.write_table(pa.Table.from_pandas(part, schema=self.schema, preserve_index=False))

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()
