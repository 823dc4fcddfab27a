"""Reading an interactions table from CSV or Parquet, with errors that name the file, and the
column mapping (`data.columns`) that lets a table keep its own column names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from core.errors import InputError

IN_FILE = "columns_in_file"  # DataFrame.attrs key: the file's columns, when only some were read
READERS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


def table_kind(path: Path) -> str:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unsupported file type '{path.suffix}' (use .csv, .tsv, .parquet or .pq)")
    return kind


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The table as read (CSV cells as strings); `columns`, when given, limits what is read to those
    of them the file has (a Parquet file then reads nothing else from disk)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"data.path: no such file: {path}")
    kind = table_kind(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq
            in_file = pq.read_schema(path).names
            frame = pd.read_parquet(path, columns=None if columns is None else [c for c in columns if c in in_file])
        else:
            sep = "\t" if kind == "tsv" else ","
            in_file = list(pd.read_csv(path, sep=sep, nrows=0).columns)
            wanted = None if columns is None else set(columns).__contains__
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], low_memory=False,
                                usecols=wanted)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot read as {kind}: {str(exc).splitlines()[0]}") from exc
    frame.attrs[IN_FILE] = list(in_file)
    return frame


def columns_found(df: pd.DataFrame) -> str:
    """For an error about a missing column: every column of the file the rows came from (when only
    some were read), else of the frame."""
    return ", ".join(map(str, df.attrs.get(IN_FILE) or df.columns))


def column_mapping(data_cfg: Mapping[str, Any]) -> dict[str, str]:
    """`data.columns`: the run's column name -> the name the table has it under."""
    mapping = {name: original for name, original in (data_cfg.get("columns") or {}).items() if original}
    targets = {}
    for name, original in mapping.items():
        if original in targets:
            raise InputError(f"data.columns maps both '{targets[original]}' and '{name}' to column '{original}'")
        targets[str(original)] = str(name)
    return {str(k): str(v) for k, v in mapping.items()}


def source_columns(names: list[str], mapping: Mapping[str, str]) -> list[str]:
    """The table's names of the run's columns `names` (what to read from disk)."""
    return [mapping.get(name, name) for name in names]


def apply_column_mapping(df: pd.DataFrame, mapping: Mapping[str, str], source: str) -> pd.DataFrame:
    """Rename the table's columns to the run's names. A mapped column the table lacks is an error that
    names the original column, unless the table already has the run's name (a table written by this
    project, e.g. a merchant file of the partition step, is already renamed)."""
    renames = {}
    for name, original in mapping.items():
        if original == name:
            continue
        if original in df.columns:
            renames[original] = name
        elif name not in df.columns:
            raise InputError(f"{source}: missing column '{original}' (data.columns.{name}={original}; "
                             f"columns found: {columns_found(df)})")
    if not renames:
        return df
    shadowed = [name for name in renames.values() if name in df.columns]
    return df.drop(columns=shadowed).rename(columns=renames)
