"""Merchants for a table that has none: `data.partition` says which rows form each silo.

* `column:<name>`: the silos are the values of a column (default `column:merchant_id`, the table's own
  merchants; `column:country` makes each country a merchant).
* `iid`: `data.partition_merchants` silos of (almost) equal size, rows drawn at random.
* `dirichlet`: label / category skew as in Hsu et al. (2019) and flwr-datasets' DirichletPartitioner:
  for every value of the column `data.partition_by` (a label such as click, or a category such as
  item_id), the shares of its rows going to each silo are drawn from Dirichlet(alpha, ..., alpha);
  small alpha gives each silo a few values, large alpha near-iid silos.

Both random schemes are seeded (`data.partition_seed`) and name silos `silo-000`, `silo-001`, ...
A draw leaving a silo with fewer than 2 rows is redrawn (with the next seed) up to 100 times.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from core.errors import InputError
from data.loading import columns_found

SCHEMES = ("column:<name>", "iid", "dirichlet")
MIN_SILO_ROWS = 2
MAX_DRAWS = 100


def partition_column(data_cfg: Mapping[str, Any]) -> str | None:
    """The column whose values are the merchants, or None for a random scheme; errors on an unknown one."""
    scheme = str(data_cfg.get("partition") or "column:merchant_id")
    if scheme.startswith("column:") and scheme[len("column:"):].strip():
        return scheme[len("column:"):].strip()
    if scheme in ("iid", "dirichlet"):
        return None
    raise InputError(f"data.partition must be one of {', '.join(SCHEMES)}, got {scheme!r}")


def silo_names(n: int) -> np.ndarray:
    return np.array([f"silo-{k:03d}" for k in range(n)], dtype=object)


def iid_silos(n_rows: int, n_silos: int, seed: int) -> np.ndarray:
    """Silo index per row: a seeded shuffle cut into n_silos parts whose sizes differ by at most one."""
    silo = np.empty(n_rows, np.int64)
    for k, rows in enumerate(np.array_split(np.random.default_rng(seed).permutation(n_rows), n_silos)):
        silo[rows] = k
    return silo


def dirichlet_silos(values: np.ndarray, n_silos: int, alpha: float, seed: int) -> np.ndarray:
    """Silo index per row: each value's rows (in a seeded order) cut by shares ~ Dirichlet(alpha)."""
    _, codes = np.unique(values, return_inverse=True)
    for attempt in range(MAX_DRAWS):
        rng = np.random.default_rng(seed + attempt)
        silo = np.empty(len(values), np.int64)
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        for rows in np.split(order, bounds):
            rows = rng.permutation(rows)
            cuts = (np.cumsum(rng.dirichlet(np.full(n_silos, alpha)))[:-1] * len(rows)).astype(np.int64)
            for k, part in enumerate(np.split(rows, cuts)):
                silo[part] = k
        if np.bincount(silo, minlength=n_silos).min() >= MIN_SILO_ROWS:
            return silo
    raise InputError(f"data.partition=dirichlet: no draw in {MAX_DRAWS} gives every one of {n_silos} silos "
                     f"{MIN_SILO_ROWS} rows; raise data.partition_alpha or lower data.partition_merchants")


def assign_merchants(df: pd.DataFrame, data_cfg: Mapping[str, Any], source: str, merchant: str) -> pd.DataFrame:
    """The table with its `merchant` column set by the scheme (unchanged for column:merchant_id)."""
    column = partition_column(data_cfg)
    if column is not None:
        if column not in df.columns and column == merchant:
            raise InputError(f"{source}: missing required column '{merchant}' (columns found: {columns_found(df)}); "
                             f"name yours with data.columns.{merchant}=<column>, or make merchants with "
                             "data.partition=iid or dirichlet")
        if column not in df.columns:
            raise InputError(f"{source}: data.partition=column:{column}, but the table has no column '{column}' "
                             f"(columns found: {columns_found(df)}); use data.partition=iid or dirichlet")
        return df if column == merchant else df.assign(**{merchant: df[column]})
    n = int(data_cfg["partition_merchants"])
    if not 1 <= n <= len(df) // MIN_SILO_ROWS:
        raise InputError(f"data.partition_merchants must be in 1..{len(df) // MIN_SILO_ROWS} for {len(df)} rows, got {n}")
    seed = int(data_cfg["partition_seed"])
    if data_cfg["partition"] == "iid":
        silo = iid_silos(len(df), n, seed)
    else:
        by = str(data_cfg["partition_by"])
        if by not in df.columns:
            raise InputError(f"{source}: data.partition_by={by}, but the table has no column '{by}' (a schema "
                              "column goes by its schema name, e.g. item_id, whatever data.columns maps it from)")
        alpha = float(data_cfg["partition_alpha"])
        if not alpha > 0:
            raise InputError(f"data.partition_alpha must be > 0, got {alpha:g}")
        silo = dirichlet_silos(df[by].astype(str).to_numpy(), n, alpha, seed)
    return df.assign(**{merchant: silo_names(n)[silo]})
