"""One job from config to outputs, for every mode: the ServerApp's main and the Hydra door both call it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from flwr.serverapp import Grid

from core.errors import InputError
from core.runtime import seed_everything
from server_app.baselines import run_centralized, run_local
from server_app.federated import run_federated
from server_app.outputs import RunResult, write_outputs
from tasks.experiment import Experiment, open_experiment
from tasks.metrics import Metrics, combine_merchants
from tasks.selection import resolve_rule
from tasks.training import oracle_score

MODES = ("federated", "centralized", "local")


def oracle_metrics(experiment: Experiment) -> dict[str, Metrics] | None:
    """The generator's ground truth scored like a model; None for real data, which has none."""
    per_merchant, counts = {}, {}
    for merchant in experiment.index.merchant_ids:
        per_merchant[merchant], counts[merchant] = oracle_score(experiment.shard(merchant, "test"), experiment.tasks)
    combined = combine_merchants(per_merchant, counts)
    return combined or None


def run_job(cfg: Mapping[str, Any], output_dir: Path, grid: Grid | None = None) -> RunResult:
    mode = cfg["mode"]
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    seed_everything(int(cfg["seed"]))
    experiment = open_experiment(cfg, prepare=True)
    experiment.device  # a bad device setting fails here, before any training
    cfg = {**cfg, "select_round": resolve_rule(str(cfg["select_round"]),
                                               any(m.n_val for m in experiment.index.merchants))}
    if int(cfg["patience"]) < 0:
        raise InputError(f"patience must be >= 0 (0 = never stop early), got {cfg['patience']}")
    experiment.cfg = cfg
    if mode == "federated":
        if grid is None:
            raise RuntimeError("mode=federated needs a Flower grid; run it through a ServerApp")
        result = run_federated(grid, experiment)
    elif mode == "centralized":
        result = run_centralized(experiment)
    else:
        result = run_local(experiment)
    result.oracle = oracle_metrics(experiment)
    write_outputs(result, output_dir, experiment.metric_names)
    return result
