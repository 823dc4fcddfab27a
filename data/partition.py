"""Simulation's stand-in for merchants' own machines: one table split into one file per merchant.

In production every merchant holds its own file. A simulation (or `make deploy-local`) starts from
one table instead, so this step writes each merchant's rows to its own file, plus a manifest that
maps partition ids to files; each simulated node is then handed its file and runs exactly the code
a deployed node runs. The table is validated here first, so a bad table is one clear line that
names the original file and row, before anything starts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from core.errors import InputError
from data.cache import written_atomically
from data.features import feature_columns
from data.loading import apply_column_mapping, column_mapping, read_table, source_columns, table_kind
from data.schema import LABEL_COLUMNS, MERCHANT, blank_cells, validate_interactions
from data.shards import check_merchant_rows, needed_columns
from data.silos import assign_merchants, partition_column
from data.synthetic import generate_platform, platform_spec

MANIFEST_FILE = "manifest.json"
ASSIGNMENT_FILE = "assignment.parquet"
PARTITION_FORMAT = 2
PARTITION_KEYS = ("partition", "partition_merchants", "partition_alpha", "partition_by", "partition_seed")


@dataclass(frozen=True)
class Partition:
    merchant_id: str
    path: Path


def _source_key(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    if data_cfg["source"] == "synthetic":
        return {"synthetic": dict(data_cfg["synthetic"])}
    path = Path(data_cfg["path"]).expanduser().resolve()
    stat = path.stat() if path.is_file() else None
    return {"path": str(path), "size": stat.st_size if stat else None, "mtime": stat.st_mtime_ns if stat else None}


def partition_dir(data_cfg: Mapping[str, Any]) -> Path:
    key = {"source": _source_key(data_cfg), "features": feature_columns(data_cfg).all,
           "columns": column_mapping(data_cfg), "on_bad_rows": data_cfg.get("on_bad_rows", "fail"),
           **{k: data_cfg.get(k) for k in PARTITION_KEYS},
           "min_rows_per_merchant": data_cfg["min_rows_per_merchant"], "format": PARTITION_FORMAT}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(data_cfg["cache_dir"]).expanduser().resolve() / "partitions" / digest


def _table_path(data_cfg: Mapping[str, Any]) -> Path:
    if data_cfg["source"] != "table":
        raise InputError(f"data.source must be 'synthetic' or 'table', got {data_cfg['source']!r}")
    if not data_cfg.get("path"):
        raise InputError("data=table needs data.path=/path/to/interactions.csv (or .parquet)")
    return Path(data_cfg["path"]).expanduser().resolve()


def _run_columns(data_cfg: Mapping[str, Any]) -> list[str]:
    """The run's names of the columns the partition step reads: a node's, plus what the silos need."""
    extra = [partition_column(data_cfg) or "", str(data_cfg.get("partition_by") or "")]
    names = needed_columns(data_cfg)
    return names + [c for c in extra if c and c not in names]


def _to_read(data_cfg: Mapping[str, Any]) -> list[str]:
    mapping = column_mapping(data_cfg)
    names = _run_columns(data_cfg)
    return source_columns(names, mapping) + [n for n in names if n in mapping]


def load_source(data_cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, str]:
    """The pooled table a simulation starts from (its used columns, under the run's names, merchants
    assigned by data.partition), and how errors should name it."""
    if data_cfg["source"] == "synthetic":
        return generate_platform(platform_spec(data_cfg["synthetic"])), "synthetic data"
    path = _table_path(data_cfg)
    source = str(path)
    raw = apply_column_mapping(read_table(path, _to_read(data_cfg)), column_mapping(data_cfg), source)
    return assign_merchants(raw, data_cfg, source, MERCHANT), source


@dataclass
class MerchantRows:
    """The table cut into merchants, read lazily: (merchant, its rows, how errors name them) in
    merchant order; `unassigned` rows (an empty merchant cell, skip mode) belong to none; `silos`,
    for a random scheme, is each row's merchant (written beside the manifest). A table held whole
    also gives `whole`: itself and each merchant's row positions, so its files are written in one pass."""
    frames: Iterator[tuple[str, pd.DataFrame, str]]
    unassigned: int
    source: str
    silos: pd.Series | None = None
    whole: tuple[pd.DataFrame, dict[str, np.ndarray]] | None = None


def merchant_rows(data_cfg: Mapping[str, Any], skip: bool) -> MerchantRows:
    if data_cfg["source"] == "table" and partition_column(data_cfg) is not None \
            and table_kind(_table_path(data_cfg)) == "parquet":
        return _parquet_merchant_rows(data_cfg, skip)
    raw, source = load_source(data_cfg)
    silos = raw[MERCHANT] if data_cfg["source"] == "table" and partition_column(data_cfg) is None else None
    if skip:
        df = raw.iloc[np.flatnonzero(~blank_cells(raw[MERCHANT]))]
        df = df.assign(**{MERCHANT: df[MERCHANT].astype(str).str.strip()})
    else:
        df = validate_interactions(raw, source, feature_columns(data_cfg))
        if not any(c in df.columns and df[c].notna().any() for c in LABEL_COLUMNS):
            raise InputError(f"{source}: every label cell is empty; nothing to learn")
    groups = {str(m): rows for m, rows in df.groupby(MERCHANT, sort=True).indices.items()}
    frames = ((m, df.iloc[rows].reset_index(drop=True), source) for m, rows in groups.items())
    return MerchantRows(frames, len(raw) - len(df), source, silos, (df, groups))


def _parquet_merchant_rows(data_cfg: Mapping[str, Any], skip: bool) -> MerchantRows:
    """A Parquet table split by a column: the column is read once, then each merchant's rows (only
    the run's columns) through a dataset filter, one merchant in memory at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    path = _table_path(data_cfg)
    source, mapping = str(path), column_mapping(data_cfg)
    column = partition_column(data_cfg) or MERCHANT
    dataset = ds.dataset(path, format="parquet")
    names = dataset.schema.names
    on_disk = mapping.get(column, column) if mapping.get(column, column) in names else column
    if on_disk not in names:
        raise InputError(f"{source}: missing column '{mapping.get(column, column)}' (data.partition=column:"
                         f"{column}; columns found: {', '.join(names)})")
    read = [c for c in dict.fromkeys(_to_read(data_cfg) + [on_disk]) if c in names]
    values = dataset.to_table(columns=[on_disk]).column(0)
    merchants = sorted(v for v in pc.unique(values).drop_null().to_pylist() if str(v).strip())
    unassigned = len(values) - int(pc.sum(pc.is_in(values, value_set=pa.array(merchants, values.type))).as_py() or 0)
    if unassigned and not skip:
        raise InputError(f"{source}: column '{on_disk}' has {unassigned} empty cell(s)")

    def frames() -> Iterator[tuple[str, pd.DataFrame, str]]:
        for merchant in merchants:
            named = f"{source} (merchant {merchant!r}, rows counted within it)"
            frame = dataset.to_table(columns=read, filter=ds.field(on_disk) == merchant).to_pandas()
            frame = assign_merchants(apply_column_mapping(frame, mapping, named), data_cfg, named, MERCHANT)
            yield str(merchant).strip(), frame if skip else validate_interactions(frame, named, feature_columns(data_cfg)), named

    return MerchantRows(frames(), unassigned, source)


def read_manifest(path: str | Path) -> list[Partition]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no partition manifest at {path}")
    stat = path.stat()
    return list(_parsed_manifest(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _parsed_manifest(path: str, mtime_ns: int, size: int) -> tuple[Partition, ...]:
    """Parsed once per process and file version: every message a simulated node answers looks its file
    up here, and parsing 10,000 merchants' manifest took 50 ms."""
    del mtime_ns, size  # the cache key: a rewritten manifest is parsed again
    root = Path(path).parent
    return tuple(Partition(m["merchant_id"], root / m["file"]) for m in json.loads(Path(path).read_text())["merchants"])


def partition_table(data_cfg: Mapping[str, Any], out_dir: Path | None = None) -> Path:
    """Write one Parquet file per merchant (merchants in sorted order) and return the manifest's path.

    Cached per source: a second call with the same table and settings only returns the path.
    """
    root = Path(out_dir) if out_dir is not None else partition_dir(data_cfg)
    if (root / MANIFEST_FILE).is_file():
        return root / MANIFEST_FILE
    skip = str(data_cfg.get("on_bad_rows", "fail")) == "skip"
    table = merchant_rows(data_cfg, skip)
    min_rows = int(data_cfg["min_rows_per_merchant"])
    if out_dir is not None:
        shutil.rmtree(root, ignore_errors=True)  # an unfinished earlier attempt
    with written_atomically(root) as staging:
        merchants = _write_whole(table, staging, min_rows) if table.whole is not None else []
        for merchant, frame, source in table.frames if table.whole is None else ():
            if not check_merchant_rows(frame, merchant, source, min_rows):
                continue  # the user asked to drop merchants this small
            name = f"merchant-{len(merchants):05d}.parquet"
            frame.to_parquet(staging / name, index=False)
            merchants.append({"merchant_id": merchant, "file": name, "rows": len(frame)})
        if not merchants:
            raise InputError(f"{table.source}: no merchant has at least data.min_rows_per_merchant={min_rows} rows")
        manifest = {"source": table.source, "partition": {k: data_cfg.get(k) for k in PARTITION_KEYS},
                    "merchants": merchants}
        if table.unassigned:
            manifest["unassigned_bad_rows"] = table.unassigned
            print(f"partition: {table.source}: {table.unassigned} row(s) without a merchant left out", flush=True)
        if table.silos is not None:
            pd.DataFrame({"row": np.arange(len(table.silos)), MERCHANT: table.silos.to_numpy()}).to_parquet(
                staging / ASSIGNMENT_FILE, index=False)
            manifest["assignment"] = ASSIGNMENT_FILE
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return root / MANIFEST_FILE


def _write_whole(table: MerchantRows, staging: Path, min_rows: int) -> list[dict[str, Any]]:
    """Each merchant's rows of a table held whole, written as slices of one Arrow table: the files
    `frame.to_parquet` would write, without a pandas frame and its conversion per merchant (10,000
    merchants: 33 s of writing before, 6 s now). The per-merchant checks run on the frame only for
    a merchant that fails their vectorised form."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    df, groups = table.whole
    order = np.concatenate(list(groups.values())) if groups else np.zeros(0, np.int64)
    ordered = df.iloc[order].reset_index(drop=True)
    labels = [c for c in LABEL_COLUMNS if c in ordered.columns]
    labelled = ordered[labels].notna().any(axis=1).to_numpy() if labels else np.zeros(len(ordered), bool)
    arrow = pa.Table.from_pandas(ordered, preserve_index=False)
    merchants, start = [], 0
    for merchant, rows in groups.items():
        n = len(rows)
        if (n < max(2, min_rows) or not labelled[start:start + n].any()) and \
                not check_merchant_rows(ordered.iloc[start:start + n], merchant, table.source, min_rows):
            start += n
            continue  # the user asked to drop merchants this small
        name = f"merchant-{len(merchants):05d}.parquet"
        pq.write_table(arrow.slice(start, n), staging / name)
        merchants.append({"merchant_id": merchant, "file": name, "rows": n})
        start += n
    return merchants


def record_partition(data_cfg: Mapping[str, Any], output_dir: Path) -> Path:
    """Copy the run's partition (manifest, and each row's silo for a random scheme) into the run's
    output folder, `partition/`, so a run says which rows each merchant held."""
    manifest = partition_table(data_cfg)
    target = Path(output_dir) / "partition"
    target.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST_FILE, ASSIGNMENT_FILE):
        if (manifest.parent / name).is_file():
            shutil.copyfile(manifest.parent / name, target / name)
    return target


def partition_for_node(manifest: str | Path, partition_id: int, num_partitions: int) -> Partition:
    """The file of simulated node `partition_id`; the federation must have one node per merchant file."""
    partitions = read_manifest(manifest)
    if num_partitions != len(partitions):
        raise InputError(f"{num_partitions} SuperNodes for {len(partitions)} merchants; run one SuperNode per "
                         f"merchant (simulation: --federation-config 'num-supernodes={len(partitions)}')")
    return partitions[partition_id]


def main(argv: list[str] | None = None) -> int:
    """`python -m data.partition [hydra overrides]`: write the merchant files, print the manifest's path."""
    import sys

    from core.config import compose_config, to_plain

    try:
        manifest = partition_table(to_plain(compose_config(list(sys.argv[1:] if argv is None else argv)))["data"])
    except InputError as exc:
        print(f"partition: error: {exc}", file=sys.stderr)
        return 2
    print(manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
