"""The two reference points of every federated result, trained with the same loop and budget:
centralized (every merchant's train split pooled, which federation may not do) and local (each
merchant alone). Both are scored on the same per-merchant test splits, and keep their round by the
same validation rule, as the federated run."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict
from logging import INFO
from typing import Any, Callable, Mapping, Sequence

import torch
from flwr.common.logger import log

from core import protocol
from core.runtime import torch_threads
from data.shards import Shard
from data.summary import pooled_bad_rows
from server_app.outputs import RoundRecord, RunResult
from server_app.progress import RunProgress
from tasks.averaging import RoundAverage, scored_state, scoring_average
from tasks.embedding_newton import embedding_newton, refit_embedding_statistics, refit_embeddings
from tasks.experiment import Experiment, open_experiment
from tasks.metrics import Metrics, combine_counted, combine_merchants, with_counts
from tasks.models import MultiTaskModel
from tasks.ranking import Scores, evaluate_merchant, wants_ranking
from tasks.selection import RoundKeeper, resolve_rule, selection_loss
from tasks.state import load_joint_state
from tasks.training import make_optimizer, oracle_score, shuffle_seed
from tasks.weighting import LossWeighting
from tasks.wide import WideStats, apply_newton, first_deep_round, named_priors, refit_statistics, train_round

Scored = tuple[dict[str, Metrics], dict[str, dict[str, Metrics]]]  # (merchants combined, per merchant)


def _combine(scores: Mapping[str, Scores]) -> Scored:
    per_merchant = {m: metrics for m, (metrics, _) in scores.items()}
    return combine_merchants(per_merchant, {m: counts for m, (_, counts) in scores.items()}), per_merchant


def _combine_counted(scores: Mapping[str, Scores]) -> Scored:
    """Validation, kept as the federated server keeps it: each task's label count rides along."""
    counts = {m: c for m, (_, c) in scores.items()}
    return (combine_counted({m: metrics for m, (metrics, _) in scores.items()}, counts),
            {m: with_counts(metrics, counts[m]) for m, (metrics, _) in scores.items()})


def evaluate_merchants(models: Mapping[str, MultiTaskModel], splits: Mapping[str, tuple[Shard, Shard, Shard]],
                       experiment: Experiment, final: bool = False) -> tuple[Scored, Scored]:
    """(test, validation): every merchant scored on its own splits, exactly as a federated client scores itself."""
    with_ranking = wants_ranking(experiment.cfg, final)
    scores = {m: evaluate_merchant(models[m], experiment, train, test, val, with_ranking)
              for m, (train, test, val) in splits.items()}
    return _combine({m: s[0] for m, s in scores.items()}), _combine_counted({m: s[1] for m, s in scores.items()})


def _splits(experiment: Experiment) -> dict[str, tuple[Shard, Shard, Shard]]:
    """(train, test, validation) of every merchant."""
    return {m: tuple(experiment.shard(m, split) for split in ("train", "test", "val"))  # type: ignore[misc]
            for m in experiment.index.merchant_ids}


def oracle_metrics(experiment: Experiment, splits: Mapping[str, tuple[Shard, Shard, Shard]]
                   ) -> dict[str, Metrics] | None:
    """The generator's ground truth scored like a model; None for real data, which has none."""
    scored = {m: oracle_score(test, experiment.tasks) for m, (_, test, _) in splits.items()}
    return combine_merchants({m: s[0] for m, s in scored.items()}, {m: s[1] for m, s in scored.items()}) or None


def run_baseline(cfg: Mapping[str, Any], progress: RunProgress) -> RunResult:
    """mode=centralized or local, in this process, over every merchant's prepared data."""
    experiment = open_experiment(cfg)
    log(INFO, "%s", experiment.id_dropout_note())
    experiment.cfg = {**experiment.cfg, "select_round": resolve_rule(str(cfg["select_round"]),
                                                          sum(m.n_val for m in experiment.index.merchants))}
    splits = _splits(experiment)
    run = run_centralized if cfg["mode"] == "centralized" else run_local
    # The threads a simulated client trains with (federation.client_cpus), so the modes compare like
    # for like. torch's default, a thread per core, ran this loop 2.2-2.5x slower than one thread on a
    # 2-core machine (256-row batches of a small model do not split well; README, Benchmarks).
    with torch_threads(int(cfg["federation"]["client_cpus"])):
        result = run(experiment, splits, progress)
    result.oracle = oracle_metrics(experiment, splits)
    result.plan = asdict(experiment.plan)
    result.merchant_rows = {m.merchant_id: m.n_train for m in experiment.index.merchants}
    result.bad_rows = pooled_bad_rows(m.summary for m in experiment.index.merchants)
    return result


def refit_after_round(model: MultiTaskModel, shard: Shard, experiment: Experiment, server_round: int) -> None:
    """train.embedding_newton: the embedding rows' Newton step on the trainer's own rows, as the
    federated server takes it on the merchants' sums after each average."""
    train_cfg = experiment.cfg["train"]
    if embedding_newton(train_cfg) and server_round >= first_deep_round(train_cfg):
        refit_embeddings(model, shard, experiment.tasks, train_cfg, experiment.device)


def statistics_at(model: MultiTaskModel, weighting: LossWeighting, shards: Sequence[Shard], experiment: Experiment
                  ) -> Callable[[dict[str, torch.Tensor], str], WideStats]:
    """Experiment.refit's statistics: these shards' statistics of a refit part at a state, loaded into `model`."""
    sums = {protocol.REFIT_BIAS: refit_statistics, protocol.REFIT_EMBEDDING: refit_embedding_statistics}

    def statistics(state: dict[str, torch.Tensor], part: str) -> WideStats:
        load_joint_state(model, weighting, state)
        return sums[part](model, shards, experiment.tasks, experiment.device)
    return statistics


def run_centralized(experiment: Experiment, splits: Mapping[str, tuple[Shard, Shard, Shard]], progress: RunProgress
                    ) -> RunResult:
    cfg, train_cfg = experiment.cfg, experiment.cfg["train"]
    merchants = list(splits)
    pooled = Shard.concat([splits[m][0] for m in merchants])
    model = experiment.new_model().to(experiment.device)
    weighting = experiment.new_weighting().to(experiment.device)
    optimizer = make_optimizer(model, weighting, train_cfg)
    same_model = {m: model for m in merchants}
    keeper: RoundKeeper[dict[str, torch.Tensor]] = RoundKeeper.from_config(cfg)
    average: RoundAverage[dict[str, torch.Tensor]] = RoundAverage.from_config(train_cfg)
    rounds = []
    losses: dict[str, float] = {}
    priors: dict[str, dict[str, float]] = {}
    for server_round in range(int(cfg["federation"]["rounds"]) + 1):
        if server_round:
            report, wide = train_round(model, weighting, optimizer, pooled, experiment.tasks, train_cfg,
                                       shuffle_seed(int(cfg["seed"]), server_round, 0), experiment.device, server_round)
            taken = apply_newton(model, wide, train_cfg, experiment.tasks)
            priors = named_priors(taken, experiment.first_order_columns)
            refit_after_round(model, pooled, experiment, server_round)
            losses = report.losses
        with scoring_average(model, weighting, average, server_round):  # the model holds what is scored
            (overall, per_merchant), (validation, _) = evaluate_merchants(same_model, splits, experiment)
            rounds.append(RoundRecord(server_round, overall, losses, validation, bias_priors=priors))
            keeper.offer(server_round, selection_loss([r.validation for r in rounds], experiment.tasks),
                         lambda: scored_state(model, weighting, average))
        progress.report(rounds[-1], experiment.metric_names, per_merchant)
        if keeper.stop:
            break
    kept = keeper.state
    def measure(candidate: dict[str, torch.Tensor]) -> dict[str, Metrics]:
        load_joint_state(model, weighting, candidate)
        return evaluate_merchants(same_model, splits, experiment)[1][0]

    kept, prior_heads, calibration = experiment.finish(kept, {r.round: r.validation for r in rounds}, keeper.round,
                                                       measure)
    kept, refit_steps, embedding_steps = experiment.refit(kept, prior_heads, statistics_at(
        model, weighting, [pooled, Shard.concat([splits[m][2] for m in merchants])], experiment))
    load_joint_state(model, weighting, kept)
    (final, per_merchant), _ = evaluate_merchants(same_model, splits, experiment, final=True)
    return RunResult("centralized", experiment.task_names, rounds, final, per_merchant, keeper.round, kept,
                     dict(cfg), prior_heads=prior_heads, calibration=calibration, refit_steps=refit_steps,
                     embedding_refit_steps=embedding_steps)


def run_local(experiment: Experiment, splits: Mapping[str, tuple[Shard, Shard, Shard]], progress: RunProgress
              ) -> RunResult:
    """Each merchant alone, and each keeps its own best round by its own validation split."""
    cfg, train_cfg = experiment.cfg, experiment.cfg["train"]
    merchants = list(splits)
    trains = {m: splits[m][0] for m in merchants}
    models = {m: experiment.new_model().to(experiment.device) for m in merchants}
    weightings = {m: experiment.new_weighting().to(experiment.device) for m in merchants}
    optimizers = {m: make_optimizer(models[m], weightings[m], train_cfg) for m in merchants}
    keepers: dict[str, RoundKeeper[Any]] = {m: RoundKeeper.from_config(cfg) for m in merchants}
    averages: dict[str, RoundAverage[Any]] = {m: RoundAverage.from_config(train_cfg) for m in merchants}
    rounds = []
    validations: dict[str, list[dict[str, Metrics]]] = {m: [] for m in merchants}  # each merchant's, from round 0
    for server_round in range(int(cfg["federation"]["rounds"]) + 1):
        losses: dict[str, dict[str, Metrics]] = {}
        counts: dict[str, dict[str, int]] = {}
        priors: dict[str, dict[str, dict[str, float]]] = {}
        if server_round:
            for k, m in enumerate(merchants):
                if keepers[m].stop:  # this merchant's own validation loss stopped improving
                    continue
                report, wide = train_round(models[m], weightings[m], optimizers[m], trains[m], experiment.tasks,
                                           train_cfg, shuffle_seed(int(cfg["seed"]), server_round, k),
                                           experiment.device, server_round)
                taken = apply_newton(models[m], wide, train_cfg, experiment.tasks)
                if taken:
                    priors[m] = named_priors(taken, experiment.first_order_columns)
                refit_after_round(models[m], trains[m], experiment, server_round)
                losses[m] = {t: {"loss": v} for t, v in report.losses.items()}
                counts[m] = report.label_counts
        with ExitStack() as scoring:  # every model holds what is scored
            for m in merchants:
                scoring.enter_context(scoring_average(models[m], weightings[m], averages[m], server_round))
            (overall, per_merchant), (validation, per_merchant_val) = evaluate_merchants(models, splits, experiment)
            for m in merchants:
                validations[m].append(per_merchant_val[m])
                keepers[m].offer(server_round, selection_loss(validations[m], experiment.tasks),
                                 lambda m=m: scored_state(models[m], weightings[m], averages[m]))
        train_loss = {t: v["loss"] for t, v in combine_merchants(losses, counts).items()}
        rounds.append(RoundRecord(server_round, overall, train_loss, validation, bias_priors=priors))
        progress.report(rounds[-1], experiment.metric_names, per_merchant)
        if all(keepers[m].stop for m in merchants):
            break
    kept = {m: keepers[m].state for m in merchants}
    prior_heads, calibration, refit_steps, embedding_steps = {}, {}, {}, {}
    for m in merchants:  # each merchant's model finished on its own validation rows
        def measure(candidate: dict[str, torch.Tensor], m: str = m) -> dict[str, Metrics]:
            load_joint_state(models[m], weightings[m], candidate)
            return evaluate_merchants({m: models[m]}, {m: splits[m]}, experiment)[1][1][m]

        kept[m], heads, steps = experiment.finish(kept[m], dict(enumerate(validations[m])), keepers[m].round, measure)
        kept[m], refit_steps[m], embedding_steps[m] = experiment.refit(kept[m], heads, statistics_at(
            models[m], weightings[m], [trains[m], splits[m][2]], experiment))
        prior_heads.update({m: heads} if heads else {})
        calibration.update({m: steps} if steps else {})
        load_joint_state(models[m], weightings[m], kept[m])
    (final, per_merchant), _ = evaluate_merchants(models, splits, experiment, final=True)
    return RunResult("local", experiment.task_names, rounds, final, per_merchant,
                     {m: keepers[m].round for m in merchants}, kept, dict(cfg), prior_heads=prior_heads,
                     calibration=calibration, refit_steps=max(refit_steps.values(), default=0),
                     embedding_refit_steps=max(embedding_steps.values(), default=0))
