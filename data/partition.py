"""Simulation's stand-in for merchants' own machines: one table split into one file per merchant.

In production every merchant holds its own file. A simulation (or `make deploy-local`) starts from
one table instead, so this step writes each merchant's rows to its own file, plus a manifest that
maps partition ids to files; each simulated node is then handed its file and runs exactly the code
a deployed node runs. The table is validated here first, so a bad table is one clear line that
names the original file and row, before anything starts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from core.errors import InputError
from data.cache import written_atomically
from data.loading import read_table
from data.schema import LABEL_COLUMNS, MERCHANT, validate_interactions
from data.shards import check_merchant_rows
from data.synthetic import PlatformSpec, generate_platform

MANIFEST_FILE = "manifest.json"
PARTITION_FORMAT = 1


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
    key = {"source": _source_key(data_cfg), "features": list(data_cfg["features"]),
           "min_rows_per_merchant": data_cfg["min_rows_per_merchant"], "format": PARTITION_FORMAT}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(data_cfg["cache_dir"]).expanduser().resolve() / "partitions" / digest


def load_source(data_cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, str]:
    """The pooled table a simulation starts from, and how errors should name it."""
    if data_cfg["source"] == "synthetic":
        return generate_platform(PlatformSpec(**data_cfg["synthetic"])), "synthetic data"
    if data_cfg["source"] != "table":
        raise InputError(f"data.source must be 'synthetic' or 'table', got {data_cfg['source']!r}")
    if not data_cfg.get("path"):
        raise InputError("data=table needs data.path=/path/to/interactions.csv (or .parquet)")
    path = Path(data_cfg["path"]).expanduser().resolve()
    return read_table(path), str(path)


def read_manifest(path: str | Path) -> list[Partition]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no partition manifest at {path}")
    return [Partition(m["merchant_id"], path.parent / m["file"]) for m in json.loads(path.read_text())["merchants"]]


def partition_table(data_cfg: Mapping[str, Any], out_dir: Path | None = None) -> Path:
    """Write one Parquet file per merchant (merchants in sorted order) and return the manifest's path.

    Cached per source: a second call with the same table and settings only returns the path.
    """
    root = Path(out_dir) if out_dir is not None else partition_dir(data_cfg)
    if (root / MANIFEST_FILE).is_file():
        return root / MANIFEST_FILE
    raw, source = load_source(data_cfg)
    df = validate_interactions(raw, source, list(data_cfg["features"]))
    labelled = [c for c in LABEL_COLUMNS if c in df.columns and df[c].notna().any()]
    if not labelled:
        raise InputError(f"{source}: every label cell is empty; nothing to learn")
    min_rows = int(data_cfg["min_rows_per_merchant"])
    if out_dir is not None:
        shutil.rmtree(root, ignore_errors=True)  # an unfinished earlier attempt
    with written_atomically(root) as staging:
        merchants = []
        for merchant, positions in df.groupby(MERCHANT, sort=True).indices.items():
            frame = df.iloc[positions].reset_index(drop=True)
            if not check_merchant_rows(frame, str(merchant), source, min_rows):
                continue  # the user asked to drop merchants this small
            name = f"merchant-{len(merchants):05d}.parquet"
            frame.to_parquet(staging / name, index=False)
            merchants.append({"merchant_id": str(merchant), "file": name, "rows": len(frame)})
        if not merchants:
            raise InputError(f"{source}: no merchant has at least data.min_rows_per_merchant={min_rows} rows")
        (staging / MANIFEST_FILE).write_text(json.dumps({"source": source, "merchants": merchants}, indent=1))
    return root / MANIFEST_FILE


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
