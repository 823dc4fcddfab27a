"""One merchant's data, prepared on the merchant's own machine: its file validated, ids hashed, rows
split into train/validation/test and written once to a local cache, plus the aggregates it may share.

Every node prepares only its own file, and the server never reads one. Ids are hashed into
fixed-size buckets per feature with a fixed key, so every merchant maps an id to the same bucket
without a shared vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from core.errors import InputError
from data.cache import written_atomically
from data.features import MISSING, FeatureColumns, FeatureSpec, feature_columns, numerical_scale, pack_numerical
from data.loading import apply_column_mapping, column_mapping, read_table, source_columns
from data.schema import (BINARY_LABELS, ID_COLUMNS, LABEL_COLUMNS, MERCHANT, ORACLE_COLUMNS, TIMESTAMP,
                         blank_cells, clean_interactions)
from data.splits import split_fractions, split_positions
from data.summary import SPLITS, DataSummary, LabelMoments

HASH_KEY = "merchant-fl-0001"  # 16 bytes, fixed so every process hashes an id to the same bucket
SUMMARY_FILE = "summary.json"
CACHE_FORMAT = 7


@dataclass
class Shard:
    """One split of one merchant, ready for tensors: hashed features, labels with NaN for 'no label'."""
    features: np.ndarray             # int64 [n, n_features]: hashed, packed numerical, bias-only columns (data.features)
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


def bucket_counts(data_cfg: Mapping[str, Any], features: Sequence[str] | None = None) -> list[int]:
    """Rows per hashed feature (default: the embedded ones, data.features ids and categorical), from
    the run's data config: identical on every node and the server."""
    buckets = dict(data_cfg["hash_buckets"])
    out = []
    for feature in feature_columns(data_cfg).hashed if features is None else features:
        n = buckets.get(feature, buckets.get("default"))
        if not n or int(n) < 1:
            raise InputError(f"data.hash_buckets has no bucket count for feature '{feature}' (and no 'default')")
        out.append(int(n))
    return out


def hash_columns(frame: pd.DataFrame, data_cfg: Mapping[str, Any], features: Sequence[str] | None = None
                 ) -> np.ndarray:
    """int64 [n, k]: each hashed column (default: the embedded ones) hashed into its buckets, as its
    stripped text; an empty categorical or bias-only cell as `MISSING` (validated rows already hold it)."""
    columns = feature_columns(data_cfg)
    names = columns.hashed if features is None else list(features)
    hashed: list[np.ndarray] = []
    for name, buckets in zip(names, bucket_counts(data_cfg, names)):
        text = frame[name].astype(str).str.strip()
        if name in columns.categorical or name in columns.bias_only:
            text = text.where(~blank_cells(frame[name]), MISSING)
        hashed.append(hash_ids(text, buckets))
    return np.stack(hashed, axis=1) if hashed else np.zeros((len(frame), 0), np.int64)


def encode_features(frame: pd.DataFrame, data_cfg: Mapping[str, Any]) -> np.ndarray:
    """The model input of rows, validated (data/schema.py) or as read: hashed columns, packed
    numericals (an empty or unparsable cell = missing), then bias-only columns. Exactly what a prepared
    shard holds for the same rows, so training and scoring encode alike; ids must be non-empty
    (validation's job)."""
    columns = feature_columns(data_cfg)
    parts = [hash_columns(frame, data_cfg)]
    if columns.numerical:
        values = np.stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float32) for c in columns.numerical],
                          axis=1)
        parts.append(pack_numerical(values))
    parts.append(hash_columns(frame, data_cfg, columns.bias_only))
    return np.concatenate(parts, axis=1)


def feature_spec(data_cfg: Mapping[str, Any], feature_stats: Mapping[str, Mapping[str, float]]) -> FeatureSpec:
    """The model's input of a run: its hashed columns' buckets, the pooled standardisation (run plan)
    of its numerical columns and its bias-only columns' buckets."""
    columns = feature_columns(data_cfg)
    scales = [numerical_scale(feature_stats.get(c)) for c in columns.numerical]
    return FeatureSpec(tuple(bucket_counts(data_cfg)), tuple(m for m, _ in scales), tuple(s for _, s in scales),
                       tuple(bucket_counts(data_cfg, columns.bias_only)))


def needed_columns(data_cfg: Mapping[str, Any]) -> list[str]:
    """The run's names of every column a node reads from its table (nothing else is read from disk)."""
    wanted = list(ID_COLUMNS) + [TIMESTAMP] + list(LABEL_COLUMNS) + list(ORACLE_COLUMNS.values())
    return wanted + [c for c in feature_columns(data_cfg).all if c not in wanted]


def read_interactions(path: Path, data_cfg: Mapping[str, Any]) -> pd.DataFrame:
    """A node's table as read from disk: only the columns the run uses, under the run's names."""
    mapping = column_mapping(data_cfg)
    names = needed_columns(data_cfg)
    raw = read_table(path, source_columns(names, mapping) + [n for n in names if n in mapping])
    return apply_column_mapping(raw, mapping, str(path))


def merchant_seed(merchant_id: str) -> int:
    """A per-merchant offset for the random split, the same on any machine (no merchant list needed)."""
    return int(hash_ids(pd.Series([merchant_id]), 2**31)[0])


def check_merchant_rows(frame: pd.DataFrame, merchant: str, source: str, min_rows: int) -> bool:
    """False when the user asked to drop merchants this small; errors for a merchant that cannot train."""
    if len(frame) < max(2, min_rows):
        if min_rows > 0:
            return False
        raise InputError(
            f"{source}: merchant {merchant!r} has {len(frame)} row(s); it needs at least 2 "
            "(one to train, one to test). Set data.min_rows_per_merchant=N to drop smaller merchants"
        )
    columns = [c for c in LABEL_COLUMNS if c in frame.columns]
    if not frame[columns].notna().any().any():
        raise InputError(f"{source}: merchant {merchant!r} has no label in any of {', '.join(columns)}")
    return True


class MerchantDataError(InputError):
    """Bad data of a merchant whose id is known: its node reports the error with the merchant."""

    def __init__(self, merchant: str, message: str) -> None:
        super().__init__(message)
        self.merchant = merchant


@dataclass(frozen=True)
class PreparedMerchant:
    """A merchant's cached splits and their summary; reading a split touches this merchant's files only."""
    root: Path
    columns: FeatureColumns
    summary: DataSummary

    @property
    def merchant_id(self) -> str:
        return self.summary.merchant_id

    @property
    def n_train(self) -> int:
        return self.summary.rows["train"]

    @property
    def n_val(self) -> int:
        return self.summary.rows["val"]

    def shard(self, split: str) -> Shard:
        table = pd.read_parquet(self.root / f"{split}.parquet")
        features = np.stack([table[f"f_{name}"].to_numpy(np.int64) for name in self.columns.hashed], axis=1)
        if self.columns.numerical:
            numerical = np.stack([table[f"n_{name}"].to_numpy(np.float32) for name in self.columns.numerical], axis=1)
            features = np.concatenate([features, pack_numerical(numerical)], axis=1)
        if self.columns.bias_only:
            bias_only = np.stack([table[f"f_{name}"].to_numpy(np.int64) for name in self.columns.bias_only], axis=1)
            features = np.concatenate([features, bias_only], axis=1)
        # np.array copies: Arrow-backed columns are read-only, which torch warns about.
        labels = {c: np.array(table[c], np.float32) for c in LABEL_COLUMNS if c in table.columns}
        oracle = {c: np.array(table[col], np.float32) for c, col in ORACLE_COLUMNS.items() if col in table.columns}
        return Shard(features, labels, oracle)


def cold_counts(train: np.ndarray, val: np.ndarray, hashed: list[str]) -> dict[str, int]:
    """Hashed column -> validation rows whose bucket no train row has (hashed features, columns in order)."""
    return {name: int(np.isin(val[:, j], train[:, j], invert=True).sum()) for j, name in enumerate(hashed)}


ONE_CLASS_LABELS = ("keep", "drop")


def one_class_setting(data_cfg: Mapping[str, Any]) -> str:
    setting = str(data_cfg.get("one_class_labels", "keep"))
    if setting not in ONE_CLASS_LABELS:
        raise InputError(f"data.one_class_labels must be one of {', '.join(ONE_CLASS_LABELS)}, got {setting!r}")
    return setting


def one_class_columns(train: pd.DataFrame) -> list[str]:
    """The binary label columns whose train labels are all one class (a merchant that never records a
    purchase): they carry the merchant's level only (data.one_class_labels)."""
    return [c for c in BINARY_LABELS if c in train.columns and train[c].nunique() == 1]  # nunique skips NaN


def merchant_cache_dir(path: Path, data_cfg: Mapping[str, Any], merchant_id: str | None) -> Path:
    """Keyed by the file's fingerprint and every data setting that changes the splits or the hashing."""
    stat = path.stat()
    key = {
        "path": str(path), "size": stat.st_size, "mtime": stat.st_mtime_ns, "merchant_id": merchant_id,
        "features": feature_columns(data_cfg).all, "buckets": bucket_counts(data_cfg),
        "columns": column_mapping(data_cfg), "on_bad_rows": data_cfg.get("on_bad_rows", "fail"),
        "test_fraction": data_cfg["test_fraction"], "val_fraction": data_cfg["val_fraction"],
        "split_seed": data_cfg["split_seed"], "min_rows_per_merchant": data_cfg["min_rows_per_merchant"],
        "one_class_labels": one_class_setting(data_cfg), "format": CACHE_FORMAT,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(data_cfg["cache_dir"]).expanduser().resolve() / "merchants" / digest


def _write_split(frame: pd.DataFrame, encoded: np.ndarray, columns: FeatureColumns, path: Path) -> None:
    """`encoded`: the hashed columns, then the bias-only ones."""
    table = pd.DataFrame({f"f_{name}": encoded[:, j] for j, name in enumerate(columns.hashed + list(columns.bias_only))})
    for name in columns.numerical:
        table[f"n_{name}"] = frame[name].to_numpy(np.float32)  # raw: the model standardises (run plan)
    for column in list(LABEL_COLUMNS) + list(ORACLE_COLUMNS.values()):
        if column in frame.columns:
            table[column] = frame[column].to_numpy()
    table.to_parquet(path, index=False)


def _merchant_of_rows(df: pd.DataFrame, source: str) -> str | None:
    """The one merchant of a file's rows; None when the column is missing (validation names that)."""
    if MERCHANT not in df.columns:
        return None
    merchants = df[MERCHANT].dropna().astype(str).str.strip().unique()
    if len(merchants) != 1:
        shown = ", ".join(repr(m) for m in sorted(merchants)[:5]) + (", ..." if len(merchants) > 5 else "")
        raise InputError(f"{source}: column '{MERCHANT}' holds {len(merchants)} merchants ({shown}); a "
                         "node's file must hold one merchant's rows, or set merchant-id in the node config")
    return str(merchants[0])


def merchant_of_file(path: str | Path, data_cfg: Mapping[str, Any]) -> str:
    """The one merchant of a node's file, reading its merchant column only (a Parquet file reads nothing
    else from disk): how a deployed node without `merchant-id` in its node config says who it is."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"data-path: no such file: {path}")
    mapping = column_mapping(data_cfg)
    raw = apply_column_mapping(read_table(path, list(dict.fromkeys(source_columns([MERCHANT], mapping) + [MERCHANT]))),
                               {k: v for k, v in mapping.items() if k == MERCHANT}, str(path))
    merchant = _merchant_of_rows(raw, str(path))
    if merchant is None:
        raise InputError(f"{path}: no column '{mapping.get(MERCHANT, MERCHANT)}' to tell its merchant; set "
                         "merchant-id in the node config")
    return merchant


def _read_prepared(root: Path, columns: FeatureColumns) -> PreparedMerchant:
    summary = DataSummary.from_flat(json.loads((root / SUMMARY_FILE).read_text()))
    return PreparedMerchant(root, columns, summary)


def prepare_merchant(path: str | Path, data_cfg: Mapping[str, Any], merchant_id: str | None = None
                     ) -> PreparedMerchant:
    """Validate, hash, split and cache one merchant's file; later calls with the same file and data
    settings just read the cache. Every row of the file is the merchant's: `merchant_id` (the node
    config's) wins over the file's merchant_id column, which must otherwise hold a single value."""
    path = Path(path).expanduser().resolve()
    columns = feature_columns(data_cfg)
    if not path.is_file():
        raise InputError(f"data-path: no such file: {path}")
    root = merchant_cache_dir(path, data_cfg, merchant_id)
    if (root / SUMMARY_FILE).is_file():
        return _read_prepared(root, columns)
    source = str(path)
    raw = read_interactions(path, data_cfg)
    if merchant_id is not None:
        raw[MERCHANT] = merchant_id
    merchant = _merchant_of_rows(raw, source)
    try:
        df, bad_rows = clean_interactions(raw, source, columns, str(data_cfg.get("on_bad_rows", "fail")))
        del raw
        min_rows = int(data_cfg["min_rows_per_merchant"])
        if not check_merchant_rows(df, str(merchant), source, min_rows):
            raise InputError(f"{source}: merchant {merchant!r} has {len(df)} row(s), fewer than "
                             f"data.min_rows_per_merchant={min_rows}; it sits this run out")
    except InputError as exc:
        if merchant is None:
            raise
        raise MerchantDataError(merchant, str(exc)) from exc
    merchant = str(merchant)
    stamps = df[TIMESTAMP].to_numpy() if TIMESTAMP in df.columns else None
    parts = dict(zip(SPLITS, split_positions(len(df), *split_fractions(data_cfg),
                                             int(data_cfg["split_seed"]) + merchant_seed(merchant), stamps)))
    if one_class_setting(data_cfg) == "drop":
        trained = np.zeros(len(df), bool)
        trained[np.concatenate([parts["train"], parts["val"]])] = True
        for column in one_class_columns(df.iloc[parts["train"]]):
            df[column] = df[column].mask(trained)  # NaN: no label
    encoded = hash_columns(df, data_cfg)
    bias_only = hash_columns(df, data_cfg, columns.bias_only)
    labels = [c for c in LABEL_COLUMNS if c in df.columns]
    train = df.iloc[parts["train"]]
    summary = DataSummary(
        merchant_id=merchant,
        label_columns=[c for c in labels if df[c].notna().any()],
        rows={split: len(rows) for split, rows in parts.items()},
        labels={split: {c: int(df[c].iloc[rows].notna().sum()) for c in labels} for split, rows in parts.items()},
        train_moments={c: LabelMoments.of(train[c].to_numpy()) for c in labels if train[c].notna().any()},
        feature_moments={c: LabelMoments.of(train[c].to_numpy()) for c in columns.numerical},
        bad_rows={reason: n for reason, n in bad_rows.items() if n},
        cold_val=cold_counts(encoded[parts["train"]], encoded[parts["val"]], columns.hashed),
    )
    with written_atomically(root) as staging:
        for split, rows in parts.items():
            _write_split(df.iloc[rows], np.concatenate([encoded[rows], bias_only[rows]], axis=1), columns,
                         staging / f"{split}.parquet")
        (staging / SUMMARY_FILE).write_text(json.dumps(summary.to_flat(), indent=1))
    return _read_prepared(root, columns)
