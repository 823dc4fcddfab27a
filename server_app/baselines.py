"""The two reference points of every federated result, trained with the same loop and budget:
centralized (every merchant's train split pooled, which federation may not do) and local (each
merchant alone). Both are scored on the same per-merchant test splits as the federated run."""

from __future__ import annotations

from typing import Mapping

from data.shards import Shard
from server_app.outputs import RoundRecord, RunResult, log_round
from tasks.experiment import Experiment
from tasks.metrics import Metrics, combine_merchants
from tasks.ranking import evaluate_merchant, wants_ranking
from tasks.models import MultiTaskModel
from tasks.state import joint_state
from tasks.training import make_optimizer, shuffle_seed, train_epochs


def evaluate_merchants(models: Mapping[str, MultiTaskModel], tests: Mapping[str, Shard], experiment: Experiment,
                       server_round: int) -> tuple[dict[str, Metrics], dict[str, dict[str, Metrics]]]:
    """Every merchant scored on its own test split, exactly as a federated client scores itself."""
    per_merchant, counts = {}, {}
    with_ranking = wants_ranking(experiment.cfg, server_round)
    for merchant, shard in tests.items():
        per_merchant[merchant], counts[merchant] = evaluate_merchant(models[merchant], experiment, merchant,
                                                                     shard, with_ranking)
    return combine_merchants(per_merchant, counts), per_merchant


def run_centralized(experiment: Experiment) -> RunResult:
    cfg, train_cfg = experiment.cfg, experiment.cfg["train"]
    merchants = experiment.index.merchant_ids
    pooled = Shard.concat([experiment.shard(m, "train") for m in merchants])
    tests = {m: experiment.shard(m, "test") for m in merchants}
    model = experiment.new_model().to(experiment.device)
    weighting = experiment.new_weighting().to(experiment.device)
    optimizer = make_optimizer(model, weighting, train_cfg)
    same_model = {m: model for m in merchants}
    rounds = []
    losses: dict[str, float] = {}
    for server_round in range(int(cfg["federation"]["rounds"]) + 1):
        if server_round:
            losses = train_epochs(model, weighting, optimizer, pooled, experiment.tasks, train_cfg,
                                  shuffle_seed(int(cfg["seed"]), server_round, 0), experiment.device).losses
        overall, per_merchant = evaluate_merchants(same_model, tests, experiment, server_round)
        rounds.append(RoundRecord(server_round, overall, losses))
        log_round(rounds[-1], experiment.metric_names)
    return RunResult("centralized", experiment.task_names, rounds, per_merchant, joint_state(model, weighting),
                     dict(cfg))


def run_local(experiment: Experiment) -> RunResult:
    cfg, train_cfg = experiment.cfg, experiment.cfg["train"]
    merchants = experiment.index.merchant_ids
    trains = {m: experiment.shard(m, "train") for m in merchants}
    tests = {m: experiment.shard(m, "test") for m in merchants}
    models = {m: experiment.new_model().to(experiment.device) for m in merchants}
    weightings = {m: experiment.new_weighting().to(experiment.device) for m in merchants}
    optimizers = {m: make_optimizer(models[m], weightings[m], train_cfg) for m in merchants}
    rounds = []
    for server_round in range(int(cfg["federation"]["rounds"]) + 1):
        losses: dict[str, dict[str, Metrics]] = {}
        counts: dict[str, dict[str, int]] = {}
        if server_round:
            for k, m in enumerate(merchants):
                report = train_epochs(models[m], weightings[m], optimizers[m], trains[m], experiment.tasks,
                                      train_cfg, shuffle_seed(int(cfg["seed"]), server_round, k), experiment.device)
                losses[m] = {t: {"loss": v} for t, v in report.losses.items()}
                counts[m] = report.label_counts
        overall, per_merchant = evaluate_merchants(models, tests, experiment, server_round)
        train_loss = {t: v["loss"] for t, v in combine_merchants(losses, counts).items()}
        rounds.append(RoundRecord(server_round, overall, train_loss))
        log_round(rounds[-1], experiment.metric_names)
    state = {m: joint_state(models[m], weightings[m]) for m in merchants}
    return RunResult("local", experiment.task_names, rounds, per_merchant, state, dict(cfg))
