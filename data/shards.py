"""Merchant shards: the table validated, ids hashed, split per merchant and written once to a cache.

The server side prepares the shards; each client then reads only its own merchant's directory.
Ids are hashed into fixed-size buckets per feature, so no merchant needs a shared vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from core.errors import InputError
from data.loading import read_table
from data.schema import LABEL_COLUMNS, MERCHANT, ORACLE_COLUMNS, TIMESTAMP, validate_interactions
from data.splits import split_positions
from data.synthetic import PlatformSpec, generate_platform

INDEX_FILE = "index.json"
HASH_KEY = "merchant-fl-0001"  # 16 bytes, fixed so every process hashes an id to the same bucket


@dataclass(frozen=True)
class MerchantEntry:
    merchant_id: str
    directory: str
    n_train: int
    n_test: int
    train_labels: dict[str, int]  # label column -> labelled train rows
    test_labels: dict[str, int]
    n_val: int = 0                # validation rows, carved from the train part: they choose the kept round
    val_labels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardIndex:
    root: Path
    features: list[str]
    buckets: list[int]
    label_columns: list[str]  # label columns with at least one value anywhere
    merchants: list[MerchantEntry]
    label_stats: dict[str, dict[str, float]]  # real-valued label -> mean and std over train rows

    @property
    def merchant_ids(self) -> list[str]:
        return [m.merchant_id for m in self.merchants]

    def merchant(self, merchant_id: str) -> MerchantEntry:
        for entry in self.merchants:
            if entry.merchant_id == merchant_id:
                return entry
        raise InputError(f"unknown merchant {merchant_id!r} (known: {', '.join(self.merchant_ids[:10])}...)")


@dataclass
class Shard:
    """One split of one merchant, ready for tensors: hashed features, labels with NaN for 'no label'."""
    features: np.ndarray             # int64 [n, n_features]
    labels: dict[str, np.ndarray]    # label column -> float32 [n]
    oracle: dict[str, np.ndarray]    # label column -> true probability / expected value, where known

    def __len__(self) -> int:
        return len(self.features)

    @staticmethod
    def concat(shards: list["Shard"]) -> "Shard":
        def cat(key_sets: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
            keys = set.intersection(*(set(k) for k in key_sets)) if key_sets else set()
            return {k: np.concatenate([s[k] for s in key_sets]) for k in sorted(keys)}
        return Shard(np.concatenate([s.features for s in shards]),
                     cat([s.labels for s in shards]), cat([s.oracle for s in shards]))


def hash_ids(values: pd.Series, buckets: int) -> np.ndarray:
    hashed = pd.util.hash_array(values.astype(str).to_numpy(dtype=object), hash_key=HASH_KEY)
    return (hashed % np.uint64(buckets)).astype(np.int64)


def _source_fingerprint(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    if data_cfg["source"] == "synthetic":
        return {"synthetic": dict(data_cfg["synthetic"])}
    path = Path(data_cfg["path"]).expanduser().resolve()
    stat = path.stat() if path.is_file() else None
    return {"path": str(path), "size": stat.st_size if stat else None, "mtime": stat.st_mtime_ns if stat else None}


def cache_dir(data_cfg: Mapping[str, Any]) -> Path:
    """Where the shards of this data config live; a different source or split gets its own folder."""
    key = {
        "source": _source_fingerprint(data_cfg),
        "features": list(data_cfg["features"]),
        "buckets": dict(data_cfg["hash_buckets"]),
        "test_fraction": data_cfg["test_fraction"],
        "split_seed": data_cfg["split_seed"],
        "val_fraction": data_cfg["val_fraction"],
        "min_rows_per_merchant": data_cfg["min_rows_per_merchant"],
        "format": 4,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(data_cfg["cache_dir"]).expanduser().resolve() / digest


def _load_source(data_cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, str]:
    if data_cfg["source"] == "synthetic":
        return generate_platform(PlatformSpec(**data_cfg["synthetic"])), "synthetic data"
    if data_cfg["source"] != "table":
        raise InputError(f"data.source must be 'synthetic' or 'table', got {data_cfg['source']!r}")
    if not data_cfg.get("path"):
        raise InputError("data=table needs data.path=/path/to/interactions.csv (or .parquet)")
    path = Path(data_cfg["path"]).expanduser().resolve()
    return read_table(path), str(path)


def _buckets(data_cfg: Mapping[str, Any]) -> list[int]:
    buckets = dict(data_cfg["hash_buckets"])
    out = []
    for feature in data_cfg["features"]:
        n = buckets.get(feature, buckets.get("default"))
        if not n or int(n) < 1:
            raise InputError(f"data.hash_buckets has no bucket count for feature '{feature}' (and no 'default')")
        out.append(int(n))
    return out


def _write_split(frame: pd.DataFrame, encoded: np.ndarray, features: list[str], path: Path) -> None:
    table = pd.DataFrame({f"f_{name}": encoded[:, j] for j, name in enumerate(features)})
    for column in list(LABEL_COLUMNS) + list(ORACLE_COLUMNS.values()):
        if column in frame.columns:
            table[column] = frame[column].to_numpy()
    table.to_parquet(path, index=False)


def prepare_shards(data_cfg: Mapping[str, Any]) -> ShardIndex:
    """Build the shard cache for this data config once; later calls just read its index."""
    root = cache_dir(data_cfg)
    if (root / INDEX_FILE).is_file():
        return read_index(root)
    raw, source = _load_source(data_cfg)
    features = list(data_cfg["features"])
    buckets = _buckets(data_cfg)
    df = validate_interactions(raw, source, features)
    encoded = np.stack([hash_ids(df[f], n) for f, n in zip(features, buckets)], axis=1)

    label_columns = [c for c in LABEL_COLUMNS if c in df.columns and df[c].notna().any()]
    if not label_columns:
        raise InputError(f"{source}: every label cell is empty; nothing to learn")
    min_rows = int(data_cfg["min_rows_per_merchant"])
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root.parent))
    try:
        entries, train_rows = [], []
        groups = df.groupby(MERCHANT, sort=True).indices
        for k, (merchant, positions) in enumerate(groups.items()):
            if len(positions) < max(2, min_rows):
                if min_rows > 0:
                    continue  # the user asked to drop merchants this small
                raise InputError(
                    f"{source}: merchant {merchant!r} has {len(positions)} row(s); it needs at least 2 "
                    "(one to train, one to test). Set data.min_rows_per_merchant=N to drop smaller merchants"
                )
            frame = df.iloc[positions]
            if not frame[label_columns].notna().any().any():
                raise InputError(f"{source}: merchant {merchant!r} has no label in any of {', '.join(label_columns)}")
            stamps = frame[TIMESTAMP].to_numpy() if TIMESTAMP in frame.columns else None
            train, val, test = split_positions(len(frame), float(data_cfg["test_fraction"]),
                                               float(data_cfg["val_fraction"]), int(data_cfg["split_seed"]) + k,
                                               stamps)
            train_rows.append(positions[train])
            directory = f"merchant-{k:05d}"
            (staging / directory).mkdir()
            parts = {"train": train, "val": val, "test": test}
            for name, part in parts.items():
                _write_split(frame.iloc[part], encoded[positions[part]], features, staging / directory / f"{name}.parquet")
            labelled = {name: {c: int(frame[c].iloc[part].notna().sum()) for c in label_columns}
                        for name, part in parts.items()}
            entries.append(MerchantEntry(
                merchant_id=str(merchant), directory=directory, n_train=len(train), n_test=len(test),
                train_labels=labelled["train"], test_labels=labelled["test"], n_val=len(val),
                val_labels=labelled["val"],
            ))
        if not entries:
            raise InputError(f"{source}: no merchant has at least data.min_rows_per_merchant={min_rows} rows")
        trained = df.iloc[np.concatenate(train_rows)]
        label_stats = {c: {"mean": float(trained[c].mean()), "std": float(trained[c].std(ddof=0)),
                           "count": int(trained[c].notna().sum())}
                       for c in label_columns if trained[c].notna().any()}
        index = {"features": features, "buckets": buckets, "label_columns": label_columns,
                 "label_stats": label_stats, "source": source, "merchants": [asdict(e) for e in entries]}
        (staging / INDEX_FILE).write_text(json.dumps(index, indent=1))
        try:
            os.replace(staging, root)
        except OSError:  # another process finished the same cache first; theirs is identical
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return read_index(root)


def read_index(root: Path) -> ShardIndex:
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise InputError(f"no prepared shards at {root}: the server prepares them before clients start")
    raw = json.loads(path.read_text())
    return ShardIndex(root=Path(root), features=raw["features"], buckets=raw["buckets"],
                      label_columns=raw["label_columns"], label_stats=raw["label_stats"],
                      merchants=[MerchantEntry(**m) for m in raw["merchants"]])


def load_shard(index: ShardIndex, merchant_id: str, split: str) -> Shard:
    """One merchant's split; reads that merchant's file and nothing else."""
    entry = index.merchant(merchant_id)
    table = pd.read_parquet(index.root / entry.directory / f"{split}.parquet")
    features = np.stack([table[f"f_{name}"].to_numpy(np.int64) for name in index.features], axis=1)
    # np.array copies: Arrow-backed columns are read-only, which torch warns about.
    labels = {c: np.array(table[c], np.float32) for c in index.label_columns if c in table.columns}
    oracle = {c: np.array(table[col], np.float32) for c, col in ORACLE_COLUMNS.items() if col in table.columns}
    return Shard(features, labels, oracle)
