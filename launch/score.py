"""`merchant-fl-score RUN_DIR IN OUT`: every row of IN (merchant_id, user_id, item_id and the run's
other feature columns) scored by the run's model into OUT, the input's columns plus one column per
task, read and written in batches (CSV, TSV or Parquet, by suffix)."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from core.errors import InputError
from data.batches import BatchWriter, read_batches
from launch.commands import run_command
from serving import load

PROG = "merchant-fl-score"


def score_file(run_dir: str, source: str, target: str, batch_rows: int = 262_144) -> int:
    """Rows scored. OUT appears only once every batch is written."""
    model = load(run_dir)
    rows = 0
    with BatchWriter(target) as writer:
        for batch in read_batches(source, batch_rows):
            clash = [c for c in model.output_columns if c in batch.columns]
            if clash:
                raise InputError(f"{source}: already has a column '{clash[0]}', which the scores would replace")
            scores = model.score(batch, source, first_row=rows + 1)
            writer.write(batch.assign(**{c: scores[c].to_numpy() for c in scores.columns}))
            rows += len(batch)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's output directory (holds model.pt)")
    parser.add_argument("source", metavar="IN", help="rows to score: .csv, .tsv or .parquet")
    parser.add_argument("target", metavar="OUT", help="where to write them with their scores: .csv, .tsv or .parquet")
    parser.add_argument("--batch-rows", type=int, default=262_144, help="rows per batch (default 262144)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the model (default 1: reading and writing take another core; "
                             "more threads lose to their own synchronisation when other jobs share the cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))

    def body() -> None:
        start = time.perf_counter()
        rows = score_file(args.run_dir, args.source, args.target, args.batch_rows)
        seconds = time.perf_counter() - start
        print(f"scored {rows:,} rows into {args.target} in {seconds:.1f} s ({rows / max(seconds, 1e-9):,.0f} rows/s)")

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
