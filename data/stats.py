"""How real-looking is a data set? Sparsity, skew, cold start and drift of a table and its split.

    python -m data.stats                                  # the default synthetic marketplace
    python -m data.stats data=synthetic_sparse            # a preset
    python -m data.stats data=table data.path=x.csv       # your own table

The split is the project's own (data.splits.split_positions per merchant, exactly as data/shards.py
cuts the shards): each merchant's latest data.test_fraction rows are its test rows when the table
has timestamps. "Unseen" means the user (item) has no row in the train part of any merchant.
The statistics are plain functions over a DataFrame; the printing is a thin layer over them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping

import numpy as np
import pandas as pd

from core.errors import InputError
from data.features import feature_columns
from data.partition import load_source
from data.schema import BINARY_LABELS, LABEL_COLUMNS, MERCHANT, TIMESTAMP, clean_interactions
from data.shards import merchant_seed
from data.splits import split_fractions, split_positions

SMALL_MERCHANT_ROWS = 200
TRAIN, VAL, TEST, DROPPED = "train", "val", "test", "dropped"


def split_parts(df: pd.DataFrame, test_fraction: float = 0.2, val_fraction: float = 0.0, split_seed: int = 0,
                min_rows_per_merchant: int = 0) -> np.ndarray:
    """Which part each row falls in ('train', 'val', 'test', or 'dropped' for a too-small merchant),
    cut exactly as data/shards.py cuts the shards."""
    parts = np.full(len(df), DROPPED, dtype=object)
    groups = df.groupby(MERCHANT, sort=True).indices
    for merchant, positions in groups.items():
        if len(positions) < max(2, min_rows_per_merchant):
            if min_rows_per_merchant > 0:
                continue
            raise InputError(f"merchant {merchant!r} has {len(positions)} row(s); it needs at least 2 "
                             "(one to train, one to test). Set data.min_rows_per_merchant=N to drop smaller merchants")
        stamps = df[TIMESTAMP].to_numpy()[positions] if TIMESTAMP in df.columns else None
        train, val, test = split_positions(len(positions), test_fraction, val_fraction,
                                           split_seed + merchant_seed(str(merchant)), stamps)
        parts[positions[train]] = TRAIN
        parts[positions[val]] = VAL
        parts[positions[test]] = TEST
    return parts


def table_stats(df: pd.DataFrame) -> dict[str, Any]:
    """Size, sparsity and merchant skew of a table."""
    per_user = df.groupby("user_id").size()
    per_item = df.groupby("item_id").size()
    sizes = df.groupby(MERCHANT).size()
    return {
        "rows": len(df), "merchants": len(sizes), "users": len(per_user), "items": len(per_item),
        "user_median": float(per_user.median()), "user_mean": float(per_user.mean()),
        "item_median": float(per_item.median()), "item_mean": float(per_item.mean()),
        "largest_merchant_share": float(sizes.max() / len(df)),
        "smallest_merchant_rows": int(sizes.min()),
        "merchants_under_200": int((sizes < SMALL_MERCHANT_ROWS).sum()),
    }


def _unseen_share(df: pd.DataFrame, parts: np.ndarray, column: str, within_merchant: bool, split: str = TEST,
                  seen_in: tuple[str, ...] = (TRAIN,)) -> float:
    keys = [MERCHANT, column] if within_merchant else [column]
    rows, train = df.loc[parts == split, keys], df.loc[np.isin(parts, seen_in), keys]
    if not len(rows):
        return float("nan")
    seen = pd.MultiIndex.from_frame(train) if within_merchant else pd.Index(train[column])
    probe = pd.MultiIndex.from_frame(rows) if within_merchant else pd.Index(rows[column])
    return float((~probe.isin(seen)).mean())


def split_stats(df: pd.DataFrame, parts: np.ndarray) -> dict[str, Any]:
    """Cold start of the split: shares of test rows whose user / item has no train row, and of
    validation rows whose user / item has none in its merchant's train (what model.id_dropout=auto reads)."""
    return {
        "train_rows": int((parts == TRAIN).sum()), "val_rows": int((parts == VAL).sum()),
        "test_rows": int((parts == TEST).sum()),
        "test_unseen_user": _unseen_share(df, parts, "user_id", within_merchant=False),
        "test_unseen_item": _unseen_share(df, parts, "item_id", within_merchant=False),
        "test_unseen_user_in_merchant": _unseen_share(df, parts, "user_id", within_merchant=True),
        "test_unseen_item_in_merchant": _unseen_share(df, parts, "item_id", within_merchant=True),
        "val_unseen_user_in_merchant": _unseen_share(df, parts, "user_id", within_merchant=True, split=VAL),
        "val_unseen_item_in_merchant": _unseen_share(df, parts, "item_id", within_merchant=True, split=VAL),
        # what refit_biases has to work with: test rows whose id the validation rows bring
        "test_user_first_in_val": _unseen_share(df, parts, "user_id", within_merchant=False)
        - _unseen_share(df, parts, "user_id", within_merchant=False, seen_in=(TRAIN, VAL)),
        "test_item_first_in_val": _unseen_share(df, parts, "item_id", within_merchant=False)
        - _unseen_share(df, parts, "item_id", within_merchant=False, seen_in=(TRAIN, VAL)),
    }


def one_class_merchants(df: pd.DataFrame, label: str) -> dict[str, float]:
    """Merchants whose labelled rows of `label` all carry one value: merchant -> that value."""
    labelled = df.dropna(subset=[label])
    by = labelled.groupby(MERCHANT)[label]
    lo, hi = by.min(), by.max()
    return {str(m): float(lo[m]) for m in lo.index[lo == hi]}


def label_stats(df: pd.DataFrame, parts: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per label column present: labelled share, base rate in train vs test, rating skew, one-class merchants."""
    out: dict[str, dict[str, Any]] = {}
    for label in LABEL_COLUMNS:
        if label not in df.columns or not df[label].notna().any():
            continue
        values = pd.to_numeric(df[label], errors="coerce")
        row = {
            "labelled_share": float(values.notna().mean()),
            "mean": float(values.mean()),
            "train_mean": float(values[parts == TRAIN].mean()),
            "test_mean": float(values[parts == TEST].mean()),
        }
        if label in BINARY_LABELS:
            row["one_class_merchants"] = one_class_merchants(df.assign(**{label: values}), label)
        else:
            rated = values.dropna()
            row["top_share"] = float((rated >= 4).mean())
            row["five_share"] = float((rated == 5).mean())
            row["train_top_share"] = float((values[parts == TRAIN].dropna() >= 4).mean())
            row["test_top_share"] = float((values[parts == TEST].dropna() >= 4).mean())
        out[label] = row
    return out


def describe(df: pd.DataFrame, test_fraction: float = 0.2, val_fraction: float = 0.0, split_seed: int = 0,
             min_rows_per_merchant: int = 0) -> dict[str, Any]:
    """All statistics of a table and its project split, as one plain dict."""
    parts = split_parts(df, test_fraction, val_fraction, split_seed, min_rows_per_merchant)
    kept = df[parts != DROPPED]
    kept_parts = parts[parts != DROPPED]
    return {"table": table_stats(kept), "split": split_stats(kept, kept_parts), "labels": label_stats(kept, kept_parts)}


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f} %"


def format_stats(stats: Mapping[str, Any]) -> str:
    t, s, labels = stats["table"], stats["split"], stats["labels"]
    lines = [
        f"rows {t['rows']:,}   merchants {t['merchants']}   users {t['users']:,}   items {t['items']:,}",
        f"interactions per user: median {t['user_median']:g}, mean {t['user_mean']:.1f}",
        f"interactions per item: median {t['item_median']:g}, mean {t['item_mean']:.1f}",
        f"largest merchant: {_pct(t['largest_merchant_share'])} of rows; smallest {t['smallest_merchant_rows']:,} rows; "
        f"{t['merchants_under_200']} merchant(s) under {SMALL_MERCHANT_ROWS} rows",
        f"split: train {s['train_rows']:,}, val {s['val_rows']:,}, test {s['test_rows']:,} rows",
        f"test rows whose user is unseen in train: {_pct(s['test_unseen_user'])} "
        f"(in that merchant's train: {_pct(s['test_unseen_user_in_merchant'])})",
        f"test rows whose item is unseen in train: {_pct(s['test_unseen_item'])} "
        f"(in that merchant's train: {_pct(s['test_unseen_item_in_merchant'])})",
    ]
    if s["val_rows"]:
        lines.append(f"validation rows whose user / item is unseen in that merchant's train: "
                     f"{_pct(s['val_unseen_user_in_merchant'])} / {_pct(s['val_unseen_item_in_merchant'])} "
                     f"(model.id_dropout=auto drops a column that often in training where it is >= 20 %)")
        lines.append(f"test rows whose user / item is unseen in train but seen in validation: "
                     f"{_pct(s['test_user_first_in_val'])} / {_pct(s['test_item_first_in_val'])} "
                     f"(refit_biases gives them a bias, refit_embeddings a vector)")
    for label, row in labels.items():
        line = (f"{label}: labelled {_pct(row['labelled_share'])} of rows; mean {row['mean']:.3g} "
                f"(train {row['train_mean']:.3g}, test {row['test_mean']:.3g})")
        if "five_share" in row:
            line += (f"; >= 4 stars {_pct(row['top_share'])} (train {_pct(row['train_top_share'])}, "
                     f"test {_pct(row['test_top_share'])}), five stars {_pct(row['five_share'])}")
        else:
            one = row["one_class_merchants"]
            listed = ", ".join(f"{m}={v:g}" for m, v in sorted(one.items())) or "none"
            line += f"; merchants all one class: {len(one)} ({listed})"
        lines.append(line)
    return "\n".join(lines)


def load_frame(data_cfg: Mapping[str, Any]) -> pd.DataFrame:
    """The validated table of a data config, as the partition step reads it (column mapping, silos,
    data.on_bad_rows)."""
    raw, source = load_source(data_cfg)
    return clean_interactions(raw, source, feature_columns(data_cfg), str(data_cfg.get("on_bad_rows", "fail")))[0]


def stats_for_config(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    return describe(load_frame(data_cfg), *split_fractions(data_cfg),
                    int(data_cfg["split_seed"]), int(data_cfg["min_rows_per_merchant"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=synthetic_sparse or "
                                                     "data=table data.path=x.csv")
    args = parser.parse_args(argv)
    from core.config import compose_config, to_plain
    try:
        cfg = to_plain(compose_config(args.overrides))
        print(format_stats(stats_for_config(cfg["data"])))
    except InputError as exc:
        print(f"stats: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
