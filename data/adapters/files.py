"""What every adapter needs around its own parsing: opening plain or gzip text, naming the table's
columns in schema order, and writing the result all at once (CSV or Parquet by the name's suffix)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import IO

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


def write_table(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write atomically: a failed conversion leaves no file that looks finished."""
    out = Path(out).expanduser()
    if out.suffix.lower() not in WRITERS:
        raise InputError(f"{out}: the output must end in .csv or .parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        if out.suffix.lower() == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            write_parquet_in_chunks(frame, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def write_parquet_in_chunks(frame: pd.DataFrame, path: Path, rows: int = ROW_GROUP) -> None:
    """One row group at a time, so the Arrow copy Parquet writing needs is one group's, not the table's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(frame), rows):
            writer.write_table(pa.Table.from_pandas(frame.iloc[start:start + rows], schema=schema, preserve_index=False))
