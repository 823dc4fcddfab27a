"""Peak memory of a large table's way in: convert, partition + prepare, train, each step measured as
its own process (`/usr/bin/time -v`), against the size of the table itself in memory.

    python -m benchmarks.large_table --rows 5000000 --workdir /tmp/large

Writes a MovieLens-layout `ratings.csv` of `--rows` ratings (seeded, skewed users and items) and a
`movies.csv` giving each movie a genre, then runs, in order:
1. `merchant-fl-convert movielens ratings.csv table.parquet --movies movies.csv` (genre = merchant);
2. the partition step and every merchant's preparation (a Parquet table is read merchant by merchant);
3. `merchant-fl mode=centralized` for one round (every merchant's train split pooled, the heaviest mode).
A process that only imports pandas, pyarrow and torch is measured too: the floor a step pays
whatever the table (converting and preparing load no torch, so they may sit below it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

GENRES = ["Drama", "Comedy", "Action", "Thriller", "Romance", "Horror", "Adventure", "Crime", "Documentary",
          "Sci-Fi", "Animation", "Children", "Mystery", "Fantasy", "War", "Musical", "Western", "Film-Noir"]


def write_movielens(folder: Path, rows: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(seed)
    n_users, n_items = max(100, rows // 100), max(50, rows // 250)
    users = (rng.pareto(1.2, rows) * n_users / 20).astype(np.int64) % n_users + 1
    items = (rng.pareto(1.0, rows) * n_items / 50).astype(np.int64) % n_items + 1
    ratings = np.clip(np.round(rng.normal(3.6, 1.0, rows) * 2) / 2, 0.5, 5.0)
    stamps = 1_000_000_000 + np.sort(rng.integers(0, 300_000_000, rows))
    pcsv.write_csv(pa.table({"userId": users, "movieId": items, "rating": ratings, "timestamp": stamps}),
                   folder / "ratings.csv")
    share = np.array([1.0 / (k + 1) for k in range(len(GENRES))])
    genres = rng.choice(GENRES, n_items, p=share / share.sum())
    pd.DataFrame({"movieId": np.arange(1, n_items + 1), "title": "t", "genres": genres}).to_csv(
        folder / "movies.csv", index=False)


ROOT = Path(__file__).resolve().parents[1]


# The synthetic default's table sizes: data=table's 262,144 rows per id table make a dense optimizer step
# cost ~10x more, which says nothing about how the table is read.
BUCKETS = ["data.hash_buckets.user_id=16384", "data.hash_buckets.item_id=16384"]


def measured(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one command run under /usr/bin/time -v, with this checkout's code."""
    run = subprocess.run(["/usr/bin/time", "-v", *command], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if run.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{run.stderr[-3000:]}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1)) / 1024
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", run.stderr).group(1)
    seconds = sum(float(part) * 60 ** k for k, part in enumerate(reversed(clock.split(":"))))
    return seconds, peak


def prepare(overrides: list[str]) -> None:
    """Step 2 on its own: the partition step and every merchant's preparation."""
    from core.config import compose_config, to_plain
    from tasks.experiment import prepare_every_merchant
    index = prepare_every_merchant(to_plain(compose_config(overrides))["data"])
    print(f"{len(index.merchants)} merchants, {sum(m.n_train for m in index.merchants):,} train rows")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/merchant-fl-large"))
    parser.add_argument("--no-train", action="store_true", help="measure converting and preparing only")
    parser.add_argument("--prepare", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare is not None:
        prepare(args.prepare)
        return 0
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    write_movielens(work, args.rows)
    data = ["data=table", f"data.path={work / 'table.parquet'}", f"data.cache_dir={work / 'cache'}"]
    python = sys.executable
    steps = {
        "imports only (the floor)": [python, "-c", "import pandas, pyarrow.parquet, torch"],
        "convert": [python, "-m", "launch.convert", "movielens", str(work / "ratings.csv"), str(work / "table.parquet"),
                    "--movies", str(work / "movies.csv")],
        "partition + prepare": [python, "-m", "benchmarks.large_table", "--prepare", *data, *BUCKETS],
        "train (centralized, 1 round)": [python, "-m", "launch.cli", *data, "mode=centralized", "federation.rounds=1",
                                         "train.wide_rounds=0", "train.batch_size=4096", "ranking.enabled=false", "device=cpu", *BUCKETS,
                                         f"hydra.run.dir={work / 'run'}"],
    }
    if args.no_train:
        del steps["train (centralized, 1 round)"]
    results = {name: measured(command) for name, command in steps.items()}
    in_memory = pd.read_parquet(work / "table.parquet").memory_usage(deep=True).sum() / 2 ** 20
    print(f"{args.rows:,} rows; ratings.csv {(work / 'ratings.csv').stat().st_size / 2 ** 20:.0f} MB, "
          f"table.parquet {(work / 'table.parquet').stat().st_size / 2 ** 20:.0f} MB, "
          f"the table in memory (pandas) {in_memory:.0f} MB")
    floor = results["imports only (the floor)"][1]
    print(f"{'step':<30} {'wall s':>8} {'peak RSS MB':>12} {'above the floor, x table':>25}")
    for name, (seconds, peak) in results.items():
        print(f"{name:<30} {seconds:>8.1f} {peak:>12.0f} {(peak - floor) / in_memory:>25.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
