"""Per-merchant train/validation/test splits: by time where the table has timestamps, else seeded random.

With timestamps the test rows are each merchant's latest and the validation rows the latest of what
remains, so choosing a round on validation never looks at the future the test measures.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from core.errors import InputError


def _holdout(n_rows: int, fraction: float, seed: int, timestamps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Positions (kept, held out); the latest rows are held out when timed. Needs n_rows >= 2."""
    n_out = min(max(1, math.ceil(n_rows * fraction)), n_rows - 1)
    order = np.argsort(timestamps, kind="stable") if timestamps is not None \
        else np.random.default_rng(seed).permutation(n_rows)
    return np.sort(order[: n_rows - n_out]), np.sort(order[n_rows - n_out:])


def _check_fractions(test_fraction: float, val_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"data.val_fraction must be in [0, 1), got {val_fraction}")


def split_fractions(data_cfg: Mapping[str, Any]) -> tuple[float, float]:
    """(data.test_fraction, data.val_fraction) read and checked, so a bad value fails in one line
    before any node reads a row, not as a float() error on every node."""
    fractions = []
    for key in ("test_fraction", "val_fraction"):
        try:
            fractions.append(float(data_cfg[key]))
        except (TypeError, ValueError):
            raise InputError(f"data.{key} must be a number, got {data_cfg[key]!r}") from None
    _check_fractions(*fractions)
    return fractions[0], fractions[1]


def split_positions(n_rows: int, test_fraction: float, val_fraction: float, seed: int,
                    timestamps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row positions (train, validation, test) of one merchant.

    Validation is carved from the train part; a merchant whose train part is a single row, or
    val_fraction 0, gets no validation rows.
    """
    _check_fractions(test_fraction, val_fraction)
    train, test = _holdout(n_rows, test_fraction, seed, timestamps)
    if val_fraction == 0.0 or len(train) < 2:
        return train, np.zeros(0, dtype=train.dtype), test
    kept, val = _holdout(len(train), val_fraction, seed + 1, None if timestamps is None else timestamps[train])
    return train[kept], train[val], test
