"""Tables too large to hold at once: read a CSV/TSV/Parquet file in batches of rows and write another
batch by batch, with pyarrow. The output appears under its name only once every batch is written,
so a failure half-way leaves no file that looks finished."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.errors import InputError
from data.loading import table_kind


def read_batches(path: str | Path, batch_rows: int = 262_144) -> Iterator[pd.DataFrame]:
    """The file's rows in order, about `batch_rows` at a time. CSV cells stay strings, as data.loading
    reads them for training (an id "007" is not the number 7); Parquet keeps its column types."""
    path = Path(path).expanduser()
    kind = table_kind(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if kind == "parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                yield batch.to_pandas()
            return
        delimiter = "\t" if kind == "tsv" else ","
        with path.open(newline="") as handle:
            header = next(csv.reader(handle, delimiter=delimiter), None)
        if not header:
            raise InputError(f"{path}: empty file (no header row)")
        reader = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(block_size=64 * batch_rows),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                 strings_can_be_null=False))
        for batch in reader:
            yield batch.to_pandas()
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as {kind}: {str(exc).splitlines()[0]}") from exc


class BatchWriter:
    """Writes DataFrames with the same columns to a CSV/TSV/Parquet file (by its suffix), via a
    `.partial` file renamed on `commit` (the end of a `with` block) and removed on `discard` (a
    `with` block left by an exception)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.kind = table_kind(self.path)
        if not self.path.parent.is_dir():
            raise InputError(f"{self.path}: no such directory: {self.path.parent}")
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
        self._schema: pa.Schema | None = None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
        if self._writer is None:
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self.partial, table.schema) if self.kind == "parquet" else \
                pacsv.CSVWriter(self.partial, table.schema,
                                write_options=pacsv.WriteOptions(delimiter="\t" if self.kind == "tsv" else ","))
        self._writer.write_table(table)
        self.rows += len(frame)

    def commit(self) -> None:
        if self._writer is None:
            raise InputError(f"{self.path}: nothing to write (the input has no rows)")
        self._writer.close()
        self._writer = None
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> "BatchWriter":
        return self

    def __exit__(self, exc_type, *rest: object) -> None:
        """Commit when the block succeeded, else discard."""
        if exc_type is None:
            self.commit()
        else:
            self.discard()
