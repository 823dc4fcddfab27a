"""Reading an interactions table from CSV or Parquet, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.errors import InputError

READERS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"data.path: no such file: {path}")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unsupported file type '{path.suffix}' (use .csv, .tsv, .parquet or .pq)")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False,
                           na_values=[""], low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot read as {kind}: {str(exc).splitlines()[0]}") from exc
