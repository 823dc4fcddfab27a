"""Amazon review dumps (McAuley lab: https://cseweb.ucsd.edu/~jmcauley/datasets/amazon_v2/ and
https://amazon-reviews-2023.github.io/) -> one row per review.

JSON lines, gzip or not. Both generations of field names are read:
2018 (`reviewerID`, `asin`, `overall`, `verified`, `unixReviewTime` in s) and 2023 (`user_id`, `asin`,
`rating`, `verified_purchase`, `timestamp` in ms). `overall`/`rating` -> rating (stars, unchanged);
`verified`/`verified_purchase` -> purchase (1 = Amazon confirmed the reviewer bought the item, 0 =
it did not; a review without the field has no purchase label).

The merchant: `--merchant-field KEY`, read from the review, else from the item's record in `--meta`
(the dump's metadata file; e.g. brand, main_cat, category, store, main_category; a list takes its
first element); an item without it gets `--missing-merchant`. Without `--merchant-field` the
merchant is each input file's name (`Electronics_5.json.gz` -> `Electronics_5`): the dumps come
one file per category, so several files make a federation of category shops.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from core.errors import InputError
from data.adapters.files import existing, open_text

FIELDS = {  # schema column -> the review keys that hold it (2018 first, then 2023)
    "user_id": ("reviewerID", "user_id"),
    "item_id": ("asin",),
    "rating": ("overall", "rating"),
    "purchase": ("verified", "verified_purchase"),
}
META_ITEM_KEYS = ("asin", "parent_asin")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--merchant-field", help="review or metadata key naming the merchant, e.g. brand, main_cat, "
                                                 "category, store (default: each input file's name)")
    parser.add_argument("--meta", help="the dump's metadata JSON lines, for a --merchant-field of the item")
    parser.add_argument("--missing-merchant", default="unknown", help="merchant of an item without the field")


def records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open_text(path) as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: line {number} is not JSON ({exc.msg})") from exc


def first_of(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in record:
            return record[key]
    return None


def scalar(value: Any) -> Any:
    """A merchant value: a list's first element, an empty one None."""
    if isinstance(value, list):
        return scalar(value[0]) if value else None
    return None if value in ("", None) else value


def meta_merchants(path: Path, field: str) -> dict[str, Any]:
    return {str(first_of(r, META_ITEM_KEYS)): scalar(r.get(field)) for _, r in records(path)}


def timestamp_s(record: dict[str, Any]) -> int | None:
    if "unixReviewTime" in record:
        return int(record["unixReviewTime"])
    if "timestamp" in record:
        return int(record["timestamp"]) // 1000  # 2023 dumps: milliseconds
    return None


def convert(inputs: list[Path], args: argparse.Namespace) -> pd.DataFrame:
    meta = meta_merchants(existing(args.meta), args.merchant_field) if args.meta and args.merchant_field else {}
    rows: dict[str, list[Any]] = {k: [] for k in ("merchant_id", "user_id", "item_id", "timestamp", "rating", "purchase")}
    for path in inputs:
        default = Path(path).name.split(".")[0]
        for number, record in records(existing(path)):
            values = {column: first_of(record, keys) for column, keys in FIELDS.items()}
            if values["user_id"] is None or values["item_id"] is None:
                raise InputError(f"{path}: line {number} has no reviewer (reviewerID/user_id) or no asin")
            if args.merchant_field:
                merchant = scalar(record.get(args.merchant_field))
                if merchant is None:
                    merchant = meta.get(str(values["item_id"]))
                merchant = args.missing_merchant if merchant is None else merchant
            else:
                merchant = default
            purchase = values["purchase"]
            rows["merchant_id"].append(str(merchant))
            rows["user_id"].append(str(values["user_id"]))
            rows["item_id"].append(str(values["item_id"]))
            rows["timestamp"].append(timestamp_s(record))
            rows["rating"].append(values["rating"])
            rows["purchase"].append(None if purchase is None else int(bool(purchase)))
    frame = pd.DataFrame(rows)
    frame["rating"] = pd.to_numeric(frame["rating"]).astype("float64")
    frame["purchase"] = frame["purchase"].astype("Int8")
    if frame["timestamp"].isna().all():
        frame = frame.drop(columns="timestamp")
    else:
        frame["timestamp"] = frame["timestamp"].astype("Int64")
    return frame
