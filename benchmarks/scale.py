"""How a simulated federation's costs grow with the platform, and what data preparation costs.

    python -m benchmarks.scale run OUT_DIR [hydra overrides...]     (one measured run; what speed.py spawns)

`simulation_cost(n)`: a fresh process runs the merchant-fl federated job on a synthetic platform of
n merchants (ROWS_PER_MERCHANT rows each on average, the issue's 10,000 merchants / 2,000,000 rows),
`federation.clients_per_round` and `clients_per_evaluation` PER_ROUND, ROUNDS rounds, from an empty
cache: generating the table and writing one file per merchant (the simulation's stand-in for the
merchants' own files), Flower and Ray starting, identifying every node, setting up the drawn ones,
training, evaluating, the final evaluation with ranking, the outputs. Its whole process tree (Ray's
GCS, raylet and actors included) is sampled for memory. A Flower mod times every client handler
inside the actors (benchmarks/client_clock.py), which splits the wall time into
- partition: generating the table and writing the merchant files, before Flower starts;
- Ray start-up: from the simulation's start to the first client handler (Ray, its actors, their
  imports), and Ray shut-down: from the run's outputs to the simulation's return;
- federated: from the first client handler to the run's outputs, against the clients' own seconds
  (set-up, train, evaluate), summed over the actors that ran them in parallel.
The machine's load average is sampled alongside: on a shared machine it says how much else ran.
`data_cost()`: generating, partitioning, preparing and loading 1,000,000 interactions (the default
platform's 20 merchants), and loading one merchant's shard.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROWS_PER_MERCHANT = 200
PER_ROUND = 100
ROUNDS = 3
DATA_ROWS = 1_000_000


def platform_overrides(n_merchants: int, rounds: int = ROUNDS, per_round: int = PER_ROUND) -> list[str]:
    return [f"data.synthetic.n_merchants={n_merchants}", f"data.synthetic.n_rows={ROWS_PER_MERCHANT * n_merchants}",
            f"federation.clients_per_round={per_round}", f"federation.clients_per_evaluation={per_round}",
            f"federation.rounds={rounds}"]


def measured_run(out: Path, overrides: list[str]) -> dict[str, Any]:
    """The child's side: one federated simulation with an empty cache under `out`, its phases timed."""
    from benchmarks.client_clock import client_seconds, clock_mod, first_start
    from core.config import compose_config, to_plain
    from data.partition import partition_table, read_manifest
    from launch.simulation import run_federated_simulation

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    clock = out / "clients.tsv"
    cfg = to_plain(compose_config([*overrides, f"data.cache_dir={out / 'cache'}"]))
    start = time.time()
    merchants = len(read_manifest(partition_table(cfg["data"])))
    simulation = time.time()
    run_federated_simulation(cfg, out / "run", [clock_mod(clock)])
    end = time.time()
    finished = (out / "run" / "metrics.json").stat().st_mtime
    first = first_start(clock) or simulation
    seconds = client_seconds(clock)
    pids = {line.split("\t")[3] for line in clock.read_text().splitlines()}
    figures = {
        "merchants": merchants, "rows": int(cfg["data"]["synthetic"]["n_rows"]),
        "partition_s": simulation - start, "ray_start_s": first - simulation, "ray_stop_s": end - finished,
        "federated_s": finished - first, "setup_s": seconds.get("query", 0.0),
        "train_s": seconds.get("train", 0.0), "evaluate_s": seconds.get("evaluate", 0.0),
        "messages": int(seconds.get("messages", 0)), "actors": len(pids),
        "prepared": len(list((out / "cache" / "merchants").glob("*/summary.json"))),
    }
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    return figures


def simulation_cost(n_merchants: int, out: Path, extra: list[str] = ()) -> dict[str, Any]:
    """One measured run in a fresh process: its figures, its end-to-end wall seconds (process start to
    exit) and the peak memory of its process tree."""
    from benchmarks.memory import watch_command

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    code, wall, memory = watch_command([sys.executable, "-m", "benchmarks.scale", "run", str(out),
                                        *platform_overrides(n_merchants), *extra], env=env,
                                       log=out.with_suffix(".log"))
    if code != 0:
        raise RuntimeError(f"the {n_merchants}-merchant run failed (exit {code}); see {out.with_suffix('.log')}")
    figures = json.loads((out / "figures.json").read_text())
    figures.update({"wall_s": wall, "peak_pss_mb": memory.peak_pss_mb, "peak_rss_mb": memory.peak_rss_mb,
                    "processes": memory.peak_processes, "load": memory.mean_load})
    client = figures["train_s"] + figures["evaluate_s"]
    everything = client + figures["setup_s"]
    figures["overhead"] = figures["federated_s"] / client if client else float("nan")
    figures["overhead_all"] = figures["federated_s"] / everything if everything else float("nan")
    figures["overhead_per_actor"] = figures["overhead_all"] * max(1, figures["actors"])
    print(f"scale: {n_merchants} merchants: {wall:.0f} s end to end, federated {figures['federated_s']:.1f} s for "
          f"{client:.1f} client train+evaluate s ({figures['overhead']:.2f}x; with set-up {figures['overhead_all']:.2f}x), "
          f"peak {memory.peak_pss_mb:.0f} MB, load {memory.mean_load:.1f}", flush=True)
    return figures


def data_cost(out: Path, rows: int = DATA_ROWS, repeats: int = 5) -> dict[str, Any]:
    """Seconds of each data step on `rows` interactions of the default platform, from an empty cache."""
    from core.config import compose_config, to_plain
    from data.partition import partition_table, read_manifest
    from data.shards import prepare_merchant
    from data.synthetic import generate_platform, platform_spec

    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    cfg = to_plain(compose_config([f"data.synthetic.n_rows={rows}", f"data.cache_dir={out}"]))["data"]
    start = time.perf_counter()
    generate_platform(platform_spec(cfg["synthetic"]))
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    partitions = read_manifest(partition_table(cfg))
    partition_s = time.perf_counter() - start
    start = time.perf_counter()
    prepared = [prepare_merchant(p.path, cfg, p.merchant_id) for p in partitions]
    prepare_s = time.perf_counter() - start
    start = time.perf_counter()
    loaded = sum(len(m.shard(split)) for m in prepared for split in ("train", "val", "test"))
    load_s = time.perf_counter() - start
    by_size = sorted(prepared, key=lambda m: m.n_train)

    def load_one(merchant) -> float:
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            merchant.shard("train")
            best = min(best, time.perf_counter() - began)
        return best

    median, largest = by_size[len(by_size) // 2], by_size[-1]
    figures = {"rows": rows, "merchants": len(prepared), "generate_s": generate_s, "partition_s": partition_s,
               "prepare_s": prepare_s, "load_s": load_s, "loaded_rows": loaded,
               "median_merchant": (median.merchant_id, median.n_train, load_one(median)),
               "largest_merchant": (largest.merchant_id, largest.n_train, load_one(largest)),
               "median_rows_all": statistics.median(m.n_train for m in prepared)}
    print(f"data: {rows} rows: generate {generate_s:.1f} s, partition {partition_s:.1f} s, prepare {prepare_s:.1f} s, "
          f"load {load_s:.2f} s", flush=True)
    return figures


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "run":
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    measured_run(Path(argv[1]), argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
