"""Ali-CCP, Alibaba Click and Conversion Prediction (https://tianchi.aliyun.com/dataset/408; Ma et
al., ESMM, SIGIR 2018) -> one row per impression.

Two files per split, comma-separated, no header:
`sample_skeleton_{train,test}.csv`: sample id, click, conversion (buy), the md5 key of the user's
common features, the number of features, the feature list; `common_features_{train,test}.csv`: the
md5 key, the number of features, the feature list. A feature list is features joined by \\x01, each
`field\\x02feature_id\\x03value`. Fields: 101 user id, 205 item id, 206 category, 207 shop, 210
intention node, 216 brand, 301 position (scenario), 121-129 user profile (single-valued) and the
user's histories 109_14, 110_14, 127_14, 150_14 and their crosses 508, 509, 702, 853 (multi-valued).

click -> click, conversion -> purchase (both 0/1 on every impression: purchase is click-and-buy, the
entire space ESMM models). user_id = field 101, item_id = field 205, merchant = `--merchant-field`
(default 207, the shop; 206 category or 301 position are other choices). Every other single-valued
field becomes a categorical column `f<field>` (use with data.features.categorical); multi-valued
fields are left out (one id per column is what the hashed embeddings take).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from core.errors import InputError
from data.adapters.files import existing, open_text

USER, ITEM = "101", "205"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--common", required=True, help="common_features_*.csv of the same split")
    parser.add_argument("--merchant-field", default="207", help="field id of the merchant (207 shop, 206 category, "
                                                                 "301 position)")


def parse_features(text: str) -> dict[str, str]:
    """field -> feature id, for fields that occur once (multi-valued fields are dropped)."""
    seen: dict[str, str] = {}
    repeated: set[str] = set()
    for feature in text.split("\x01"):
        if not feature:
            continue
        field, _, rest = feature.partition("\x02")
        if field in seen:
            repeated.add(field)
        seen[field] = rest.partition("\x03")[0]
    return {f: v for f, v in seen.items() if f not in repeated}


def read_common(path: Path) -> dict[str, dict[str, str]]:
    out = {}
    with open_text(path) as stream:
        for number, line in enumerate(stream, 1):
            parts = line.rstrip("\r\n").split(",", 2)
            if len(parts) != 3:
                raise InputError(f"{path}: line {number} is not 'key,count,features'")
            out[parts[0]] = parse_features(parts[2])
    return out


def convert(inputs: list[Path], args: argparse.Namespace) -> pd.DataFrame:
    common = read_common(existing(args.common))
    rows = []
    for path in inputs:
        with open_text(existing(path)) as stream:
            for number, line in enumerate(stream, 1):
                parts = line.rstrip("\r\n").split(",", 5)
                if len(parts) != 6:
                    raise InputError(f"{path}: line {number} is not 'id,click,conversion,key,count,features'")
                _, click, conversion, key, _, features = parts
                if key not in common:
                    raise InputError(f"{path}: line {number}: common-features key {key} is not in {args.common}")
                fields = {**common[key], **parse_features(features)}
                missing = [f for f in (USER, ITEM, args.merchant_field) if f not in fields]
                if missing:
                    raise InputError(f"{path}: line {number} has no field {missing[0]}")
                rows.append({"merchant_id": fields.pop(args.merchant_field), "user_id": fields.pop(USER),
                             "item_id": fields.pop(ITEM), "purchase": int(conversion), "click": int(click),
                             **{f"f{field}": value for field, value in fields.items()}})
    frame = pd.DataFrame(rows)
    features = sorted(c for c in frame.columns if c.startswith("f") and c[1:].isdigit())
    return frame[["merchant_id", "user_id", "item_id", "purchase", "click"] + features]
