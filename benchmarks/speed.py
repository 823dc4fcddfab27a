"""Speed and memory as ratios measured in one run; the machine is shared and noisy, so compare the
ratios, not the seconds.

    python -m benchmarks.speed [hydra overrides...]      (make bench-speed ARGS="...")

1. What federation costs: the same job (config, rounds, per-merchant epochs, per-round evaluation)
   run as mode=federated through a real Flower simulation, as mode=local in one process (the same
   per-merchant training without transport or aggregation) and as mode=centralized (the rows pooled).
2. What the server's aggregation costs: the per-task average of one round's updates, against the
   clients' training in that round.
3. What each architecture costs: parameters, the bytes one client sends per round, training and
   scoring throughput over the pooled train split, and the peak memory of a process that trains it,
   each in a fresh process; ratios to shared_bottom.
4. How fast `merchant-fl-score` scores a 1,000,000-row table end to end (benchmarks/scoring.py).
Writes outputs/bench/speed/report.md.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from benchmarks.report import make_command, markdown, publish
from benchmarks.scoring import scoring_cost, scoring_table
from core.config import CONF_DIR, compose_config, to_plain
from core.errors import InputError
from data.shards import Shard
from launch.simulation import run_federated_simulation
from server_app.aggregation import ClientUpdate, aggregate_multitask
from server_app.orchestration import run_job
from tasks.experiment import open_experiment
from tasks.state import joint_owners, joint_state, load_joint_state, snapshot_state
from tasks.training import make_optimizer, predict, shuffle_seed, train_epochs

REFERENCE_MODEL = "shared_bottom"


def _timed(fn, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def federation_cost(overrides: list[str], out: Path) -> dict[str, float]:
    """Wall seconds of one run per mode."""
    seconds = {}
    for mode in ("federated", "local", "centralized"):
        cfg = to_plain(compose_config([*overrides, f"mode={mode}"]))
        run = run_federated_simulation if mode == "federated" else run_job
        _, seconds[mode] = _timed(run, cfg, out / mode)
        print(f"{mode}: {seconds[mode]:.1f} s", flush=True)
    return seconds


def aggregation_cost(cfg: Mapping[str, Any]) -> dict[str, float]:
    """One round's client training, one merchant after another, then the server's average of their
    updates: the ratio is what aggregation adds to a round's compute."""
    experiment = open_experiment(cfg, prepare=True)
    model, weighting = experiment.new_model(), experiment.new_weighting()
    start_state = snapshot_state(model, weighting)
    updates, train_s = [], 0.0
    for k, merchant in enumerate(experiment.index.merchant_ids):
        load_joint_state(model, weighting, start_state)
        optimizer = make_optimizer(model, weighting, cfg["train"])
        report, seconds = _timed(train_epochs, model, weighting, optimizer, experiment.shard(merchant, "train"),
                                 experiment.tasks, cfg["train"], shuffle_seed(0, 1, k), torch.device("cpu"))
        train_s += seconds
        updates.append(ClientUpdate({n: v.numpy().copy() for n, v in joint_state(model, weighting).items()},
                                    report.examples, report.label_counts))
    current = {n: v.numpy() for n, v in start_state.items()}
    _, aggregate_s = _timed(aggregate_multitask, current, updates, joint_owners(model, weighting))
    return {"updates": len(updates), "train_s": train_s, "aggregate_s": aggregate_s}


def model_figures(overrides: list[str], model_name: str) -> dict[str, float]:
    """Run in a fresh process, so that its peak memory is this architecture's alone."""
    cfg = to_plain(compose_config([*overrides, f"model={model_name}"]))
    experiment = open_experiment(cfg)
    merchants = experiment.index.merchant_ids
    pooled = Shard.concat([experiment.shard(m, "train") for m in merchants])
    model, weighting = experiment.new_model(), experiment.new_weighting()
    update = joint_state(model, weighting)
    optimizer = make_optimizer(model, weighting, cfg["train"])
    one_epoch = {**cfg["train"], "local_epochs": 1}
    _, train_s = _timed(train_epochs, model, weighting, optimizer, pooled, experiment.tasks, one_epoch, 0,
                        torch.device("cpu"))
    _, predict_s = _timed(predict, model, pooled.features, experiment.tasks, torch.device("cpu"))
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "update_mb": sum(v.numel() * v.element_size() for v in update.values()) / 2**20,
            "train_rows_s": len(pooled) / train_s, "predict_rows_s": len(pooled) / predict_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def architecture_cost(overrides: list[str]) -> dict[str, dict[str, float]]:
    names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    names.remove(REFERENCE_MODEL)
    figures = {}
    context = multiprocessing.get_context("spawn")
    for name in [REFERENCE_MODEL, *names]:
        with context.Pool(1, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            figures[name] = pool.apply(model_figures, (overrides, name))
        print(f"model={name}: {figures[name]['train_rows_s']:.0f} train rows/s", flush=True)
    return figures


def report(command: str, rounds: int, federation: dict[str, float], aggregation: dict[str, float],
           architectures: dict[str, dict[str, float]], scoring: list[dict[str, float | str]]) -> str:
    fed_rows = [[mode, f"{s:.1f}", f"{s / federation['local']:.2f}", f"{s / federation['centralized']:.2f}"]
                for mode, s in federation.items()]
    agg = aggregation
    agg_rows = [[str(agg["updates"]), f"{agg['train_s']:.2f}", f"{agg['aggregate_s']:.3f}",
                 f"{agg['aggregate_s'] / agg['train_s']:.3f}"]]
    ref = architectures[REFERENCE_MODEL]
    arch_rows = [[name, f"{f['parameters']:,}", f"{f['update_mb']:.2f}",
                  *(x for key in ("train_rows_s", "predict_rows_s", "peak_rss_mb")
                    for x in (f"{f[key]:.0f}", f"{f[key] / ref[key]:.2f}"))]
                 for name, f in architectures.items()]
    return "\n\n".join([
        f"Command: `{command}` ({rounds} rounds)",
        "What federation costs (wall seconds of one run each, Ray start-up included for federated):",
        markdown(["mode", "seconds", "x local", "x centralized"], fed_rows),
        "What the server's aggregation costs (one round, every merchant, one process):",
        markdown(["updates", "client training s", "aggregation s", "aggregation / training"], agg_rows),
        f"What each architecture costs (one epoch over the pooled train split, one thread, a fresh process "
        f"each; ratios to {REFERENCE_MODEL}):",
        markdown(["model", "parameters", "update MB", "train rows/s", "x", "score rows/s", "x",
                  "peak RSS MB", "x"], arch_rows),
        "What scoring traffic costs (merchant-fl-score: a 1,000,000-row table read, scored and written in "
        "batches, with a one-round centralized model of this config):",
        scoring_table(scoring),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every measurement")
    parser.add_argument("--out", default="outputs/bench/speed")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out).resolve()
    try:
        cfg = to_plain(compose_config(args.overrides))
        aggregation = aggregation_cost(cfg)  # also builds the shard cache the other parts read
        architectures = architecture_cost(args.overrides)
        federation = federation_cost(args.overrides, out)
        scoring = scoring_cost(args.overrides, out / "scoring")
    except InputError as exc:
        print(f"bench-speed: error: {exc}", file=sys.stderr)
        return 2
    command = make_command("bench-speed", args.overrides)
    publish(report(command, int(cfg["federation"]["rounds"]), federation, aggregation, architectures, scoring), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
