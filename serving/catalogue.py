"""What a recommendation needs besides the model: the merchant's catalogue and what the user touched.

The model knows items only as hashed ids, and a run writes none of its data (the federated server
never reads a row), so both come from the merchant's own interactions: a file or DataFrame the
caller passes, or, by default, the run's own table as its data config names it (the simulation's
per-merchant partition of the synthetic platform or of `data.path`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from core.errors import InputError
from data.loading import read_table
from data.partition import partition_table, read_manifest
from data.schema import MERCHANT, TIMESTAMP

Interactions = pd.DataFrame | str | Path | None


def normalised_ids(frame: pd.DataFrame, columns: Sequence[str], source: str, first_row: int = 1
                   ) -> dict[str, pd.Series]:
    """Each id column as stripped strings, exactly as training saw it (data/schema.py); an empty cell is
    an error naming the column and its first row."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{source}: missing column '{missing[0]}' (columns found: "
                         f"{', '.join(map(str, frame.columns))})")
    out = {}
    for column in columns:
        raw = frame[column]
        values = raw.astype(str).str.strip()
        empty = (raw.isna() | (values == "")).to_numpy()
        if empty.any():
            raise InputError(f"{source}: column '{column}' has {int(empty.sum())} empty cell(s), first at row "
                             f"{first_row + int(np.argmax(empty))}")
        out[column] = values
    return out


def _run_data(merchant: str, data_cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, str]:
    """The merchant's file of the run's own data (the simulation's partition; cached, else rebuilt)."""
    source = "the run's synthetic data" if data_cfg["source"] == "synthetic" else f"the run's table {data_cfg['path']}"
    try:
        partitions = read_manifest(partition_table(data_cfg))
    except InputError as exc:
        raise InputError(f"{exc}; pass the merchant's interactions with --data PATH") from exc
    files = {p.merchant_id: p.path for p in partitions}
    if merchant not in files:
        raise InputError(f"unknown merchant {merchant!r}: {source} has {len(files)} merchants ({_shown(files)})")
    return read_table(files[merchant]), source


def _shown(values: Sequence[str] | Mapping[str, Any], limit: int = 8) -> str:
    values = sorted(values)
    return ", ".join(values[:limit]) + (", ..." if len(values) > limit else "")


def merchant_interactions(merchant: str, interactions: Interactions, columns: Sequence[str],
                          data_cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, str]:
    """The merchant's rows (the model's columns normalised, a timestamp if there is one) and how to
    name their source in errors."""
    if interactions is None:
        frame, source = _run_data(merchant, data_cfg)
    elif isinstance(interactions, pd.DataFrame):
        frame, source = interactions, "the interactions given"
    else:
        frame, source = read_table(interactions), str(interactions)
    ids = normalised_ids(frame, columns, source)
    rows = pd.DataFrame(ids)
    if TIMESTAMP in frame.columns:
        rows[TIMESTAMP] = pd.to_numeric(frame[TIMESTAMP], errors="coerce").to_numpy()
    mine = rows[rows[MERCHANT] == merchant]
    if mine.empty:
        raise InputError(f"unknown merchant {merchant!r}: {source} has no row of it "
                         f"(merchants there: {_shown(rows[MERCHANT].unique())})")
    return mine.reset_index(drop=True), source


def candidate_rows(rows: pd.DataFrame, merchant: str, user: str, columns: Sequence[str], source: str,
                   include_seen: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per catalogue item to score for the user (catalogue order: first appearance), and
    whether the user already touched each item.

    A candidate copies the user's latest row and replaces the item; a further feature column that
    holds one value per item (an item attribute such as its category) takes the candidate item's
    value, any other (a user or context attribute) keeps the user's latest value.
    """
    user_rows = rows[rows["user_id"] == user]
    if user_rows.empty:
        raise InputError(f"unknown user {user!r}: {source} has no row of this user with merchant {merchant!r}")
    if TIMESTAMP in user_rows.columns:
        user_rows = user_rows.sort_values(TIMESTAMP, kind="stable")
    latest = user_rows.iloc[-1]
    catalogue = pd.unique(rows["item_id"])
    seen = np.isin(catalogue, user_rows["item_id"].unique())
    items = catalogue if include_seen else catalogue[~seen]
    candidates = pd.DataFrame({c: np.repeat(latest[c], len(items)) for c in columns})
    candidates["item_id"] = items
    for column in columns:
        if column in (MERCHANT, "user_id", "item_id"):
            continue
        per_item = rows.groupby("item_id", sort=False)[column]
        if (per_item.nunique() <= 1).all():  # an item attribute
            candidates[column] = per_item.last().reindex(items).to_numpy()
    return candidates, (seen if include_seen else seen[~seen])
