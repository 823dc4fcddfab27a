"""Taobao UserBehavior (https://tianchi.aliyun.com/dataset/649) -> one row per user-item pair.

`UserBehavior.csv` has no header: user, item, category, behavior, timestamp; behavior is one of
pv (page view of the item), cart, fav, buy. Each (user, item) pair becomes one row:
click = 1 if the user viewed the item (a pv event), else 0; purchase = 1 if the user bought it,
else 0; timestamp = the pair's first event; merchant = the item's category (its first event's).
cart and fav make a pair without labelling it. The log records no impressions, so nearly every
pair has click = 1: the purchase head (buy among viewed pairs) is the informative task.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InputError
from data.adapters.files import existing, open_text

BEHAVIORS = ("pv", "cart", "fav", "buy")
COLUMNS = ["user_id", "item_id", "category", "behavior", "timestamp"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options: the category is the merchant


def read_events(path: Path) -> pd.DataFrame:
    with open_text(path) as stream:
        frame = pd.read_csv(stream, header=None, names=COLUMNS, dtype={"behavior": "category"})
    unknown = ~frame["behavior"].isin(BEHAVIORS)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0]) + 1
        raise InputError(f"{path}: behavior {frame['behavior'].iloc[row - 1]!r} at row {row} is not one of "
                         f"{', '.join(BEHAVIORS)}")
    return frame


def convert(inputs: list[Path], args: argparse.Namespace) -> pd.DataFrame:
    del args
    events = pd.concat([read_events(existing(p)) for p in inputs], ignore_index=True)
    events["click"] = (events["behavior"] == "pv").astype("int8")
    events["purchase"] = (events["behavior"] == "buy").astype("int8")
    events = events.sort_values("timestamp", kind="stable")
    pairs = events.groupby(["user_id", "item_id"], sort=True).agg(
        merchant_id=("category", "first"), timestamp=("timestamp", "first"),
        purchase=("purchase", "max"), click=("click", "max")).reset_index()
    return pairs
