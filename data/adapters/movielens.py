"""MovieLens ratings (https://grouplens.org/datasets/movielens/) -> one row per rating.

Reads any of the three layouts, recognised by content (not by name):
`u.data` (ML-100K: user, item, rating, timestamp, tab-separated), `ratings.dat` (ML-1M/10M:
`UserID::MovieID::Rating::Timestamp`) and `ratings.csv` (ML-20M/25M/32M/latest: header
`userId,movieId,rating,timestamp`). The label is `rating` (stars, 0.5-5), unchanged.

MovieLens has no merchants. With `--movies` (`u.item`, `movies.dat` or `movies.csv` of the same
release) each movie's first listed genre is its merchant: one shop per genre, every shop with its
own catalogue and users shared across shops, like a marketplace of specialist stores. Without it
every row gets the merchant `--merchant` (default `movielens`); split it into silos at training time
with data.partition=dirichlet or iid.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from core.errors import InputError
from data.adapters.files import existing, first_line, open_text

RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
# u.item's 19 genre flags, in file order (ML-100K README).
UITEM_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                "War", "Western"]
CHUNK_ROWS = 500_000
LATIN = "latin-1"  # the .dat and u.item files of the older releases are not UTF-8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--movies", help="u.item, movies.dat or movies.csv: each movie's first genre is its merchant")
    parser.add_argument("--merchant", default="movielens", help="the merchant of every row without --movies")


def read_ratings(path: Path) -> Iterator[pd.DataFrame]:
    """The ratings in chunks of CHUNK_ROWS, whatever the layout."""
    line = first_line(path, LATIN)
    if "::" in line:  # ratings.dat: split on ':' and keep every other field (fast C parser)
        options = {"sep": ":", "header": None, "usecols": [0, 2, 4, 6], "names": range(7)}
    elif "\t" in line:
        options = {"sep": "\t", "header": None, "usecols": [0, 1, 2, 3]}
    elif line.lower().replace('"', "").startswith("userid,"):
        options = {"usecols": [0, 1, 2, 3]}
    else:
        raise InputError(f"{path}: not a MovieLens ratings file (first line {line[:60]!r}; expected u.data, "
                         "ratings.dat or ratings.csv)")
    with open_text(path, LATIN) as stream:
        for chunk in pd.read_csv(stream, chunksize=CHUNK_ROWS, **options):
            chunk.columns = RATING_COLUMNS
            yield chunk


def read_first_genres(path: Path) -> pd.Series:
    """movie id -> its first listed genre."""
    line = first_line(path, LATIN)
    with open_text(path, LATIN) as stream:
        if "::" in line:  # movies.dat: MovieID::Title::Genre|Genre
            rows = [raw.rstrip("\r\n").split("::") for raw in stream if raw.strip()]
            ids, genres = [int(r[0]) for r in rows], [r[-1].split("|")[0] for r in rows]
        elif line.lower().replace('"', "").startswith("movieid,"):
            frame = pd.read_csv(stream)
            ids, genres = frame["movieId"].tolist(), frame["genres"].str.split("|").str[0].tolist()
        elif line.count("|") >= len(UITEM_GENRES) + 4:  # u.item: id|title|dates|url|19 flags
            frame = pd.read_csv(stream, sep="|", header=None)
            flags = frame.iloc[:, -len(UITEM_GENRES):].to_numpy()
            ids = frame[0].tolist()
            genres = [UITEM_GENRES[int(np.argmax(f))] if f.any() else "unknown" for f in flags]
        else:
            raise InputError(f"{path}: not a MovieLens movies file (u.item, movies.dat or movies.csv)")
    return pd.Series(genres, index=ids)


def convert(inputs: list[Path], args: argparse.Namespace) -> Iterator[pd.DataFrame]:
    """Chunk by chunk: the ratings are never in memory whole."""
    genres = read_first_genres(existing(args.movies)) if args.movies else None
    for path in inputs:
        for chunk in read_ratings(existing(path)):
            if genres is None:
                chunk.insert(0, "merchant_id", args.merchant)
                yield chunk
                continue
            merchant = chunk["item_id"].map(genres)
            if merchant.isna().any():
                missing = chunk.loc[merchant.isna(), "item_id"].iloc[0]
                raise InputError(f"{args.movies}: movie {missing} of the ratings is not listed")
            chunk.insert(0, "merchant_id", merchant.to_numpy())
            yield chunk
