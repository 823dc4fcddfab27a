"""The interactions table: one row per (merchant, user, item) interaction, and its validation.

Validation names the file, column, row and value of the first problem it finds, so a user can fix the
table without reading code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import InputError

MERCHANT = "merchant_id"
ID_COLUMNS = (MERCHANT, "user_id", "item_id")
TIMESTAMP = "timestamp"
BINARY_LABELS = ("purchase", "click")
REAL_LABELS = ("rating",)
LABEL_COLUMNS = REAL_LABELS + BINARY_LABELS
# Ground truth a generator may add: per label, the true probability (binary) or expected value (real).
ORACLE_COLUMNS = {"rating": "true_rating_mean", "purchase": "true_p_purchase", "click": "true_p_click"}


def _first_bad_row(mask: pd.Series) -> tuple[int, int]:
    """(count, 1-based data row of the first True) for a boolean mask."""
    positions = np.flatnonzero(mask.to_numpy())
    return len(positions), int(positions[0]) + 1


def _numeric(df: pd.DataFrame, column: str, source: str) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna() & (df[column].astype(str).str.strip() != "")
    if bad.any():
        count, row = _first_bad_row(bad)
        raise InputError(
            f"{source}: column '{column}' has {count} non-numeric value(s), "
            f"first {df[column].iloc[row - 1]!r} at row {row}"
        )
    return values.astype("float64")


def validate_interactions(df: pd.DataFrame, source: str, features: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Check the table and return it normalised: string ids, float labels (NaN = no label), int time."""
    if len(df) == 0:
        raise InputError(f"{source}: the table has no rows")
    needed = list(ID_COLUMNS) + [f for f in features if f not in ID_COLUMNS]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        kind = "required" if missing[0] in ID_COLUMNS else "feature"
        raise InputError(
            f"{source}: missing {kind} column '{missing[0]}' (columns found: {', '.join(map(str, df.columns))})"
        )
    labels = [c for c in LABEL_COLUMNS if c in df.columns]
    if not labels:
        raise InputError(f"{source}: no label column; need at least one of {', '.join(LABEL_COLUMNS)}")

    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for column in needed:
        raw = df[column].reset_index(drop=True)
        empty = raw.isna() | (raw.astype(str).str.strip() == "")
        if empty.any():
            count, row = _first_bad_row(empty)
            raise InputError(f"{source}: column '{column}' has {count} empty cell(s), first at row {row}")
        out[column] = raw.astype(str).str.strip()

    for column in labels:
        values = _numeric(df.reset_index(drop=True), column, source)
        if column in BINARY_LABELS:
            bad = values.notna() & ~values.isin([0.0, 1.0])
            rule = "must be 0 or 1 (or empty)"
        else:
            bad = values.notna() & ~np.isfinite(values)
            rule = "must be a finite number (or empty)"
        if bad.any():
            count, row = _first_bad_row(bad)
            raise InputError(
                f"{source}: column '{column}' {rule}; found {values.iloc[row - 1]:g} at row {row} "
                f"({count} bad value(s))"
            )
        out[column] = values.astype("float32")

    if TIMESTAMP in df.columns:
        stamps = _numeric(df.reset_index(drop=True), TIMESTAMP, source)
        if stamps.isna().any():
            count, row = _first_bad_row(stamps.isna())
            raise InputError(f"{source}: column '{TIMESTAMP}' has {count} empty cell(s), first at row {row}")
        out[TIMESTAMP] = stamps.astype("int64")

    for column in ORACLE_COLUMNS.values():
        if column in df.columns:
            out[column] = pd.to_numeric(df[column].reset_index(drop=True), errors="coerce").astype("float32")
    return out
