"""What differential privacy costs: purchase AUC, click AUC and rating RMSE against epsilon.

    python -m benchmarks.privacy [--data default,synthetic_sparse] [--noise 0,0.3,0.5,1,2] [--seeds 3]
                                 [--report-only] [hydra overrides...]

Per data preset: a federated run without DP (privacy=none, the reference), the same with the
first-order part trained by SGD and dense tables (what privacy=dp switches off), then privacy=dp at each
noise multiplier (0 = clipping and the unweighted mean alone, epsilon unbounded), each over seeds
0..N-1 (the DP noise is seeded with the run's seed, privacy.noise_seed, so the figures reproduce).
Every run is a normal run under outputs/bench/privacy/<data>/<setting>/seed-N; a run whose
metrics.json exists is read, not repeated, so an interrupted grid resumes, and report.md is rewritten
after every run (a partial grid gives a partial table). epsilon is what the whole run spent (every
round played), at privacy.delta.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

from benchmarks.report import markdown, publish
from core.config import compose_config, to_plain
from core.errors import InputError
from launch.simulation import run_federated_simulation

OUT = "outputs/bench/privacy"
COLUMNS = [("purchase", "auc", "purchase AUC"), ("click", "auc", "click AUC"), ("rating", "rmse", "rating RMSE")]


# What privacy=dp switches off before any clipping: the Newton-fitted biases and row-wise tables.
WITHOUT_ROW_STATISTICS = ["train.first_order_fit=sgd", "federation.table_aggregation=dense"]


def settings(noise: list[float]) -> list[tuple[str, list[str]]]:
    """(label, overrides) of the references (the default; the default without the per-row statistics DP
    refuses) and of each noise multiplier."""
    return [("none", []), ("none-sgd-dense", WITHOUT_ROW_STATISTICS)] + \
        [(f"dp-z{z:g}", ["privacy=dp", f"privacy.noise_multiplier={z:g}"]) for z in noise]


def data_overrides(name: str) -> list[str]:
    return [] if name == "default" else [f"data={name}"]


def run_dir(out: Path, data: str, label: str, seed: int) -> Path:
    return out / data / label / f"seed-{seed}"


def ensure_run(out: Path, data: str, label: str, overrides: list[str], seed: int, extra: list[str]) -> dict:
    """The run's metrics.json, running it first if it is not there yet."""
    where = run_dir(out, data, label, seed)
    if not (where / "metrics.json").exists():
        noise_seed = [f"privacy.noise_seed={seed}"] if "privacy=dp" in overrides else []
        cfg = to_plain(compose_config([*data_overrides(data), *overrides, *noise_seed, f"seed={seed}", *extra]))
        run_federated_simulation(cfg, where)
    return json.loads((where / "metrics.json").read_text())


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def epsilon_cell(docs: list[dict]) -> str:
    spent = [d["rounds"][-1].get("privacy") for d in docs]
    if not spent or spent[0] is None:
        return "- (no DP)"
    eps = [s["epsilon"] for s in spent]
    if any(e is None for e in eps):  # JSON has no infinity: an unbounded epsilon is stored as null
        return "∞"
    return f"{statistics.mean(eps):.3g}"


def table(out: Path, datas: list[str], grid: list[tuple[str, list[str]]], seeds: int) -> str:
    rows = []
    for data in datas:
        for label, _ in grid:
            docs = [json.loads((run_dir(out, data, label, s) / "metrics.json").read_text()) for s in range(seeds)
                    if (run_dir(out, data, label, s) / "metrics.json").exists()]
            if not docs:
                continue
            z = label.removeprefix("dp-z") if label.startswith("dp-z") else "-"
            rounds = statistics.mean(d["rounds"][-1]["round"] for d in docs)
            metrics = [cell([d["tasks"][t][m] for d in docs if d["tasks"].get(t, {}).get(m) is not None])
                       for t, m, _ in COLUMNS]
            rows.append([data, "dp" if label.startswith("dp-z") else label.replace("none-sgd-dense", "none, sgd + dense"), z, epsilon_cell(docs), *metrics,
                         f"{rounds:g}", str(len(docs))])
    header = ["data", "privacy", "noise multiplier", "epsilon (δ=1e-5)", *[c for _, _, c in COLUMNS],
              "rounds played", "seeds"]
    return markdown(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run")
    parser.add_argument("--data", default="default,synthetic_sparse", help="data presets; default = conf's default")
    parser.add_argument("--noise", default="0,0.3,0.5,1,2", help="noise multipliers of privacy=dp")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--report-only", action="store_true", help="only tabulate the runs already there")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out, datas = Path(args.out).resolve(), args.data.split(",")
    grid = settings([float(z) for z in args.noise.split(",")])
    command = " ".join(["python -m benchmarks.privacy", f"--data {args.data}", f"--noise {args.noise}",
                        f"--seeds {args.seeds}", *args.overrides])
    try:
        if not args.report_only:
            for seed in range(args.seeds):  # seed by seed: a grid cut short still has every setting
                for data in datas:
                    for label, overrides in grid:
                        ensure_run(out, data, label, overrides, seed, args.overrides)
                        print(f"done: {data} {label} seed {seed}", flush=True)
                        (out / "report.md").write_text(f"Command: `{command}`\n\n{table(out, datas, grid, args.seeds)}\n")
    except InputError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    publish(f"Command: `{command}`\n\n{table(out, datas, grid, args.seeds)}\n", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
