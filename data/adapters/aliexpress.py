"""AliExpress per-country search logs (https://tianchi.aliyun.com/dataset/74690; the per-country
`AliExpress_{NL,ES,FR,US,RU}/{train,test}.csv` multi-task benchmarks use) -> one row per impression.

A file has a header: a search id, the categorical features, the numerical features, then the labels
`click` and `conversion` (the last two columns). click -> click, conversion -> purchase; the country
is the merchant (`--country`, else read from the path: `AliExpress_NL/train.csv` -> NL), so the
files of several countries make a federation of country scenarios.

The public files carry no user or item id. The search (one result page of one user's query) stands
in for the user: user_id = the search id; item_id is `-` for every row, one shared id, so the model
learns from the feature columns: the first `--categorical` (default 16) after the search id are
kept as categorical columns, the rest as numerical, under their header names. The command prints
the data.features overrides that use them.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from core.errors import InputError
from data.adapters.files import existing, open_text

LABELS = {"click": "click", "conversion": "purchase"}
NO_ITEM = "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--country", help="the merchant of every row (default: from each path, AliExpress_XX)")
    parser.add_argument("--categorical", type=int, default=16, help="categorical columns after the search id")


def country_of(path: Path, given: str | None) -> str:
    if given:
        return given
    for part in reversed(path.resolve().parts):
        found = re.search(r"(?:aliexpress[_-])([A-Za-z]{2})\b", part, re.IGNORECASE)
        if found:
            return found.group(1).upper()
    raise InputError(f"{path}: no country in the path (expected .../AliExpress_XX/...); pass --country XX")


def read_country(path: Path, country: str, n_categorical: int) -> tuple[pd.DataFrame, list[str], list[str]]:
    with open_text(path) as stream:
        frame = pd.read_csv(stream, dtype=str)
    columns = list(frame.columns)
    if [c.lower() for c in columns[-2:]] != list(LABELS):
        raise InputError(f"{path}: the last two columns must be click and conversion, found {', '.join(columns[-2:])}")
    features = columns[1:-2]
    if not 0 <= n_categorical <= len(features):
        raise InputError(f"{path}: --categorical {n_categorical} but the file has {len(features)} feature columns")
    out = pd.DataFrame({"merchant_id": country, "user_id": frame[columns[0]], "item_id": NO_ITEM,
                        "purchase": pd.to_numeric(frame[columns[-1]]).astype("int8"),
                        "click": pd.to_numeric(frame[columns[-2]]).astype("int8")})
    categorical, numerical = features[:n_categorical], features[n_categorical:]
    out[categorical] = frame[categorical]
    out[numerical] = frame[numerical].apply(pd.to_numeric)
    return out, categorical, numerical


def convert(inputs: list[Path], args: argparse.Namespace) -> pd.DataFrame:
    parts = [read_country(existing(p), country_of(Path(p), args.country), args.categorical) for p in inputs]
    frame = pd.concat([p[0] for p in parts], ignore_index=True)
    _, categorical, numerical = parts[0]
    print(f"features: data.features.categorical=[{','.join(categorical)}] "
          f"data.features.numerical=[{','.join(numerical)}]")
    return frame
