"""The interactions table: one row per (merchant, user, item) interaction, and its validation.

Validation names the file, column, row and value of the first problem it finds, so a user can fix the
table without reading code. With `data.on_bad_rows=skip` the rows with a problem are left out instead,
and counted by reason (`BAD_ROW_REASONS`), so nothing is ever dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from core.errors import InputError
from data.features import MISSING, FeatureColumns
from data.loading import columns_found

MERCHANT = "merchant_id"
ID_COLUMNS = (MERCHANT, "user_id", "item_id")
TIMESTAMP = "timestamp"
BINARY_LABELS = ("purchase", "click")
REAL_LABELS = ("rating",)
LABEL_COLUMNS = REAL_LABELS + BINARY_LABELS
# Ground truth a generator may add: per label, the true probability (binary) or expected value (real).
ORACLE_COLUMNS = {"rating": "true_rating_mean", "purchase": "true_p_purchase", "click": "true_p_click"}
# Why a row is left out under on_bad_rows=skip; a row with several problems counts under the first.
BAD_ROW_REASONS = ("missing_id", "unparsable_value", "bad_label", "missing_timestamp")
ON_BAD_ROWS = ("fail", "skip")


@dataclass(frozen=True)
class Problem:
    """Rows failing one check: the reason they would be skipped for, and the error that fails the table."""
    reason: str
    rows: np.ndarray  # bool [n]
    message: str


def _first_bad_row(mask: np.ndarray) -> tuple[int, int]:
    """(count, 1-based data row of the first True) for a boolean mask."""
    positions = np.flatnonzero(mask)
    return len(positions), int(positions[0]) + 1


def blank_cells(raw: pd.Series) -> np.ndarray:
    """True where a cell is empty: missing, or only whitespace."""
    return (raw.isna() | (raw.astype(str).str.strip() == "")).to_numpy()


def _parse(raw: pd.Series, column: str, source: str) -> tuple[pd.Series, Problem | None]:
    """Numbers (NaN for an empty cell) and the problem of the cells that are not numbers."""
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    bad = (values.isna().to_numpy() & ~blank_cells(raw))
    if not bad.any():
        return values, None
    count, row = _first_bad_row(bad)
    return values, Problem("unparsable_value", bad, f"{source}: column '{column}' has {count} non-numeric "
                                                    f"value(s), first {raw.iloc[row - 1]!r} at row {row}")


def _feature_columns(features: FeatureColumns | Sequence[str]) -> FeatureColumns:
    """A plain list means hashed id columns (the table's own ids are always required)."""
    return features if isinstance(features, FeatureColumns) else FeatureColumns(tuple(features))


def _check_columns(df: pd.DataFrame, source: str, columns: FeatureColumns) -> list[str]:
    """The id columns to check; errors for a missing column or no label at all (no row can fix those)."""
    ids = list(ID_COLUMNS) + [f for f in columns.ids if f not in ID_COLUMNS]
    needed = ids + [f for f in [*columns.categorical, *columns.numerical, *columns.bias_only] if f not in ids]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        kind = "required" if missing[0] in ID_COLUMNS else "feature"
        raise InputError(
            f"{source}: missing {kind} column '{missing[0]}' (columns found: {columns_found(df)})"
        )
    if not any(c in df.columns for c in LABEL_COLUMNS):
        raise InputError(f"{source}: no label column; need at least one of {', '.join(LABEL_COLUMNS)}")
    return ids


def _problems(df: pd.DataFrame, source: str, columns: FeatureColumns, ids: list[str],
              out: pd.DataFrame) -> Iterator[Problem]:
    """Every check in the order a failing table reports them; fills `out` with the parsed columns."""
    for column in ids:
        raw = df[column]
        empty = blank_cells(raw)
        if empty.any():
            count, row = _first_bad_row(empty)
            yield Problem("missing_id", empty, f"{source}: column '{column}' has {count} empty cell(s), first at row {row}")
        out[column] = raw.astype(str).str.strip().to_numpy()
    for column in [*columns.categorical, *columns.bias_only]:
        if column not in out.columns:
            raw = df[column]
            out[column] = np.where(blank_cells(raw), MISSING, raw.astype(str).str.strip().to_numpy())
    for column in [c for c in LABEL_COLUMNS if c in df.columns]:
        values, problem = _parse(df[column], column, source)
        if problem is not None:
            yield problem
        if column in BINARY_LABELS:
            bad = (values.notna() & ~values.isin([0.0, 1.0])).to_numpy()
            rule = "must be 0 or 1 (or empty)"
        else:
            bad = (values.notna() & ~np.isfinite(values)).to_numpy()
            rule = "must be a finite number (or empty)"
        if bad.any():
            count, row = _first_bad_row(bad)
            yield Problem("bad_label", bad, f"{source}: column '{column}' {rule}; found {values.iloc[row - 1]:g} "
                                            f"at row {row} ({count} bad value(s))")
        out[column] = values.astype("float32").to_numpy()
    for column in columns.numerical:
        values, problem = _parse(df[column], column, source)
        if problem is not None:
            yield problem
        out[column] = values.where(np.isfinite(values)).astype("float32").to_numpy()
    if TIMESTAMP in df.columns:
        stamps, problem = _parse(df[TIMESTAMP], TIMESTAMP, source)
        if problem is not None:
            yield problem
        empty = blank_cells(df[TIMESTAMP])
        if empty.any():
            count, row = _first_bad_row(empty)
            yield Problem("missing_timestamp", empty,
                          f"{source}: column '{TIMESTAMP}' has {count} empty cell(s), first at row {row}")
        out[TIMESTAMP] = stamps.fillna(0).astype("int64").to_numpy()
    for column in ORACLE_COLUMNS.values():
        if column in df.columns:
            out[column] = pd.to_numeric(df[column], errors="coerce").astype("float32").to_numpy()


def clean_interactions(df: pd.DataFrame, source: str, features: FeatureColumns | Sequence[str] = (),
                       on_bad_rows: str = "fail") -> tuple[pd.DataFrame, dict[str, int]]:
    """The table normalised (string ids, float labels with NaN = no label, int time, categoricals as
    strings with `MISSING` for an empty cell, numericals as float with NaN), and how many rows were
    left out per reason: under "fail" the first problem raises instead."""
    if on_bad_rows not in ON_BAD_ROWS:
        raise InputError(f"data.on_bad_rows must be fail or skip, got {on_bad_rows!r}")
    if len(df) == 0:
        raise InputError(f"{source}: the table has no rows")
    columns = _feature_columns(features)
    ids = _check_columns(df, source, columns)
    df = df.reset_index(drop=True)
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    dropped = np.zeros(len(df), bool)
    counts = dict.fromkeys(BAD_ROW_REASONS, 0)
    for problem in _problems(df, source, columns, ids, out):
        if on_bad_rows == "fail":
            raise InputError(problem.message)
        new = problem.rows & ~dropped
        counts[problem.reason] += int(new.sum())
        dropped |= new
    if dropped.all():
        raise InputError(f"{source}: every one of its {len(df)} rows is bad ({format_bad_rows(counts)}); nothing left")
    if dropped.any():
        out = out[~dropped].reset_index(drop=True)
    return out, counts


def validate_interactions(df: pd.DataFrame, source: str, features: FeatureColumns | Sequence[str] = ()) -> pd.DataFrame:
    """Check the table and return it normalised; the first problem is an error."""
    return clean_interactions(df, source, features, "fail")[0]


def format_bad_rows(counts: dict[str, int]) -> str:
    """'12 bad row(s) skipped: missing_id 4, bad_label 8' (reasons with a count only)."""
    total = sum(counts.values())
    parts = ", ".join(f"{reason} {n}" for reason, n in counts.items() if n)
    return f"{total} bad row(s) skipped" + (f": {parts}" if parts else "")
