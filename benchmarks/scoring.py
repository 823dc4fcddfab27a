"""How fast a trained model scores traffic: `merchant-fl-score` over a 1,000,000-row table, CSV and
Parquet, with 1 and 2 torch threads.

    python -m benchmarks.scoring [--rows N] [--run-dir DIR] [hydra overrides...]

Without --run-dir it first trains a small centralized run of the given config (one round; the
model's size is the config's, which is what scoring speed depends on). Reports wall rows/s and rows
per CPU second (the process's own CPU time): on a shared machine the wall figure falls with the
other jobs' load, the CPU figure much less. Writes outputs/bench/scoring/report.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.report import markdown, publish
from core.config import compose_config, to_plain
from core.errors import InputError
from launch.score import score_file
from server_app.orchestration import run_job

TRAIN = ["mode=centralized", "federation.rounds=1", "ranking.enabled=false", "data.synthetic.n_rows=20000"]


def traffic(rows: int, n_merchants: int, seed: int = 0) -> pd.DataFrame:
    """Random (merchant, user, item) rows with string ids, like logged traffic."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"merchant_id": np.char.mod("m%02d", rng.integers(0, n_merchants, rows)),
                         "user_id": np.char.mod("u%05d", rng.integers(0, 3000, rows)),
                         "item_id": np.char.mod("i%05d", rng.integers(0, 1000, rows))})


def measure(run_dir: Path, source: Path, target: Path, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    rows = score_file(str(run_dir), str(source), str(target))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"rows": rows, "wall_s": wall, "cpu_s": cpu}


def scoring_cost(overrides: list[str], out: Path, rows: int = 1_000_000, run_dir: Path | None = None
                 ) -> list[dict[str, float | str]]:
    """One measurement per (format, threads)."""
    out.mkdir(parents=True, exist_ok=True)
    if run_dir is None:
        cfg = to_plain(compose_config([*overrides, *TRAIN]))
        run_dir = out / "run"
        run_job(cfg, run_dir)
    n_merchants = int(to_plain(compose_config(overrides))["data"]["synthetic"]["n_merchants"])
    table = traffic(rows, n_merchants)
    results = []
    for kind in ("csv", "parquet"):
        source = out / f"traffic.{kind}"
        table.to_csv(source, index=False) if kind == "csv" else table.to_parquet(source, index=False)
        for threads in (1, 2):
            figures = measure(run_dir, source, out / f"scored.{kind}", threads)
            results.append({"format": kind, "threads": threads, **figures})
            print(f"{kind}, {threads} thread(s): {figures['rows'] / figures['wall_s']:,.0f} rows/s", flush=True)
    return results


def scoring_table(results: list[dict[str, float | str]]) -> str:
    rows = [[str(r["format"]), str(r["threads"]), f"{int(r['rows']):,}", f"{r['wall_s']:.1f}",
             f"{r['rows'] / r['wall_s']:,.0f}", f"{r['cpu_s']:.1f}", f"{r['rows'] / r['cpu_s']:,.0f}"]
            for r in results]
    return markdown(["IN -> OUT", "torch threads", "rows", "wall s", "rows/s", "CPU s", "rows per CPU s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the model trained first")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--run-dir", type=Path, help="score with this run's model instead of training one")
    parser.add_argument("--out", default="outputs/bench/scoring")
    args = parser.parse_args(argv)
    try:
        results = scoring_cost(args.overrides, Path(args.out).resolve(), args.rows, args.run_dir)
    except InputError as exc:
        print(f"bench-scoring: error: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["python -m benchmarks.scoring", *sys.argv[1:]] if argv is None else
                       ["python -m benchmarks.scoring", *argv])
    publish(f"Command: `{command}`\n\nmerchant-fl-score, every row read, scored and written in batches:\n\n"
            f"{scoring_table(results)}\n", Path(args.out).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
