"""Per-merchant train/test splits: by time where the table has timestamps, else seeded random."""

from __future__ import annotations

import math

import numpy as np


def split_positions(n_rows: int, test_fraction: float, seed: int, timestamps: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (train, test) of one merchant; the latest rows are the test set when timed."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = min(max(1, math.ceil(n_rows * test_fraction)), n_rows - 1)
    if timestamps is not None:
        order = np.argsort(timestamps, kind="stable")
    else:
        order = np.random.default_rng(seed).permutation(n_rows)
    return np.sort(order[: n_rows - n_test]), np.sort(order[n_rows - n_test:])
