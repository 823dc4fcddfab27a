"""The federated run: one Flower node per merchant, multi-task FedAvg, evaluation after every round.

The server learns the federation from the nodes, never from files: it waits for `federation.min_nodes`,
learns which merchant each node is (identify: the merchant id only; in a simulation the launcher's
record of Flower's partitions, server_app/setup.py), and sets a node up (its data prepared, its
aggregates learned) only when a round first addresses it. The run plan is fixed from the first set-up
cohort, everyone round 0 evaluates and round 1 trains (with every merchant in every round that is
every node, as before), and sent with every message. Each round draws its clients among the nodes
connected at that moment (server_app/cohorts.py); a node that joins later is identified and can be
drawn from the next round, one that leaves is simply no longer addressed.
After every round a checkpoint goes to the output folder (server_app/checkpoint.py); `resume=` continues
from one, `init_from=` starts a new run from a trained model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from core import protocol
from core.errors import InputError
from core.update_codec import check_compression
from data.summary import pooled_bad_rows
from server_app.aggregation import RowTotals
from server_app.checkpoint import (CHECKPOINT, Checkpoint, check_resumable, initial_arrays, read_checkpoint,
                                   restore_rng, rng_state, trained_state, write_checkpoint)
from server_app.outputs import RoundRecord, RunResult
from server_app.privacy import PrivateRounds
from server_app.progress import RunProgress
from server_app.replies import RoundRules, round_rules, sample_count
from server_app.roster import Roster
from server_app.server_opt import ServerOptimizer, server_optimizer
from server_app.secure_round import secure_train_round
from server_app.cohorts import evaluation_cohort, evaluation_count, train_cohort
from server_app.setup import Directory, addressees, failure, identify_newcomers, node_of, set_up_nodes
from server_app.strategy import (Evaluation, MultiTaskFedAvg, RoundFailed, arrays_to_numpy, combined_train_metrics,
                                 numpy_to_arrays)
from tasks.averaging import RoundAverage
from tasks.embedding_newton import embedding_newton, embedding_newton_settings
from tasks.experiment import Experiment, experiment_for
from tasks.metrics import Metrics, combine_merchants, unflatten
from tasks.plan import RunPlan, plan_from_summaries
from tasks.ranking import wants_ranking
from tasks.selection import RoundKeeper, resolve_rule, selection_loss
from tasks.state import joint_owners, joint_state
from tasks.training import newton_fit
from tasks.wide import averaged_by_rows, first_deep_round, named_priors, newton_fitted, newton_settings


def wait_for_nodes(grid: Grid, min_nodes: int, timeout_s: float) -> list[int]:
    """Start once at least `min_nodes` SuperNodes are connected; more may join later."""
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise InputError(
                f"{len(nodes)} SuperNode(s) connected after {timeout_s:.0f} s, fewer than federation.min_nodes="
                f"{min_nodes}; start more SuperNodes, lower federation.min_nodes or raise federation.wait_for_nodes_s"
            )
        time.sleep(0.5)
    return nodes


def _exchange(grid: Grid, messages, timeout: float, server_round: int, phase: str, roster: Roster,
              failures: list[dict[str, Any]]) -> list:
    """Send and wait at most `timeout`; a node that has not answered by then is a failure of this round
    (a SuperNode that died is only marked offline by Flower after two missed 30 s heartbeats)."""
    messages = list(messages)
    if not messages:
        raise RoundFailed(f"round {server_round}: no set-up SuperNode is connected to {phase}")
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    sent_to = addressees(messages)
    answered = {node_of(reply, sent_to) for reply in replies}
    for node in sorted({m.metadata.dst_node_id for m in messages} - answered):
        failures.append(failure(server_round, node, roster.merchant(node), f"no {phase} reply within {timeout:.0f} s"))
        log(WARNING, "round %d %s: node %d (merchant %s) did not answer within %.0f s", server_round, phase, node,
            roster.merchant(node) or "?", timeout)
    if not replies:
        raise RoundFailed(f"round {server_round}: no client answered the {phase} request within {timeout:.0f} s")
    return replies


def oracle_of(roster: Roster, experiment: Experiment, merchants: Iterable[str]) -> dict[str, Metrics] | None:
    """The ground truth's scores (synthetic data only) over the run's tasks, combined over `merchants`
    (those the reported metrics cover, so that both describe the same rows)."""
    names = set(experiment.task_names)
    merchants = set(merchants)
    # merchant order, as the replies: the same float sums every run
    scored = sorted((m, s) for m, s in roster.oracle.items() if m in merchants)
    per_merchant = {m: {t: v for t, v in metrics.items() if t in names} for m, (metrics, _) in scored}
    counts = {m: counts for m, (_, counts) in scored}
    return combine_merchants(per_merchant, counts) or None


@dataclass(frozen=True)
class Cohorts:
    """Whom each phase addresses (server_app/cohorts.py), from the federation settings."""
    fraction_train: float
    per_round: int | None
    fraction_evaluate: float
    per_evaluation: int | None
    seed: int

    @staticmethod
    def from_config(cfg: Mapping[str, Any], rules: RoundRules) -> "Cohorts":
        fed = cfg["federation"]
        return Cohorts(float(fed["fraction_train"]), rules.clients_per_round, float(fed["fraction_evaluate"]),
                       evaluation_count(fed), rules.seed)

    def train(self, roster: Roster, connected: Iterable[int], server_round: int) -> dict[int, int]:
        return train_cohort(roster.identified(connected), self.fraction_train, self.per_round, self.seed, server_round)

    def evaluate(self, roster: Roster, connected: Iterable[int]) -> dict[int, int]:
        return evaluation_cohort(roster.identified(connected), self.fraction_evaluate, self.per_evaluation,
                                 self.seed, roster.refused)


def addressed(grid: Grid, roster: Roster, drawn: dict[int, int], failures: list[dict[str, Any]], server_round: int,
              timeout: float) -> dict[int, int]:
    """The drawn nodes a phase sends to: those not set up yet are set up first; those whose set-up
    failed sit it out (a drawn merchant keeps its place, so runs and resumes draw alike)."""
    set_up_nodes(grid, roster, drawn, failures, server_round, timeout)
    return roster.usable(drawn)


def evaluated(grid: Grid, roster: Roster, cohorts: Cohorts, failures: list[dict[str, Any]], server_round: int,
              timeout: float) -> dict[int, int]:
    """The evaluation cohort, set up: a merchant whose set-up fails is replaced by the next in order."""
    while True:
        cohort = cohorts.evaluate(roster, grid.get_node_ids())
        if not roster.unprepared(cohort):
            return roster.usable(cohort)
        set_up_nodes(grid, roster, cohort, failures, server_round, timeout)


def set_up_federation(grid: Grid, cfg: Mapping[str, Any], roster: Roster, failures: list[dict[str, Any]],
                      cohorts: Cohorts, first_round: int, plan: RunPlan | None = None,
                      directory: Directory | None = None) -> Experiment:
    """Wait for the first nodes, learn their merchants, set up the first cohort (whom `first_round`'s
    evaluation and its first training round address) and fix from it the plan every node will build from
    (a resumed run keeps its checkpoint's `plan`)."""
    fed = cfg["federation"]
    timeout = float(fed["round_timeout_s"])
    wait_for_nodes(grid, int(fed["min_nodes"]), float(fed["wait_for_nodes_s"]))
    identify_newcomers(grid, roster, failures, 0, timeout, directory)
    connected = list(grid.get_node_ids())
    first_train = max(first_round, 1)
    drawn = cohorts.train(roster, connected, first_train) if first_train <= int(fed["rounds"]) else {}
    set_up_nodes(grid, roster, {**drawn, **cohorts.evaluate(roster, connected)}, failures, 0, timeout)
    evaluated(grid, roster, cohorts, failures, 0, timeout)  # replaces any evaluation node that failed
    if not roster.summaries:
        raise RoundFailed(f"setup: every one of {len(roster.refused)} nodes failed to set up; "
                          f"first error: {failures[0]['reason'] if failures else '?'}")
    plan = plan or plan_from_summaries(cfg.get("tasks"), roster.summaries.values())
    rule = resolve_rule(str(cfg["select_round"]), sum(s.rows["val"] for s in roster.summaries.values()))
    log(INFO, "setup: %d node(s) identified, the plan fixed from %d merchant(s); tasks %s",
        len(roster.merchant_of_node), len(roster.summaries), ", ".join(plan.tasks))
    experiment = experiment_for({**cfg, "select_round": rule}, plan)
    log(INFO, "setup: %s", experiment.id_dropout_note())
    return experiment


def _resumed(cfg: Mapping[str, Any]) -> Checkpoint | None:
    """The checkpoint `resume=` names, checked against this run's config; None for a fresh run."""
    if not cfg.get("resume"):
        return None
    if cfg.get("privacy", {}).get("mode", "none") != "none":
        raise InputError("resume with privacy is not supported: the accountant's spent budget is not in the "
                         "checkpoint (start a new run, or resume with privacy=none)")
    checkpoint = read_checkpoint(cfg["resume"])
    check_resumable(checkpoint.config, cfg, cfg["resume"])
    return checkpoint


def _optimised(model, cfg: Mapping[str, Any]) -> list[str]:
    """What the server optimiser steps: trained parameters, not the Newton-fitted biases (server_opt.py)."""
    fitted = newton_fitted(model, cfg["train"])
    return [name for name, _ in model.named_parameters() if name not in fitted]


def _checkpoint(server_round: int, arrays: ArrayRecord, optimizer: ServerOptimizer, rounds: list[RoundRecord],
                keeper: RoundKeeper[ArrayRecord], experiment: Experiment, roster: Roster,
                failures: list[dict[str, Any]], started_with: Mapping[str, Any], row_totals: RowTotals,
                average: RoundAverage[dict]) -> Checkpoint:
    best = keeper.best_state
    return Checkpoint(server_round, arrays_to_numpy(arrays), optimizer.state, rounds, keeper.progress(),
                      None if best is None else arrays_to_numpy(best), experiment.plan.to_json(),
                      dict(roster.index_of_merchant), failures, dict(started_with), rng_state(), row_totals.state(),
                      average.average)


def run_federated(grid: Grid, cfg: Mapping[str, Any], progress: RunProgress, output_dir: Path | None = None,
                  directory: Directory | None = None) -> RunResult:
    """The federated job; with `output_dir`, a checkpoint is written there after every round; `directory`
    names the nodes' merchants without a message where the launcher knows them (a simulation)."""
    fed = cfg["federation"]
    timeout = float(fed["round_timeout_s"])
    started_with = cfg
    # Every setting and file is checked before any node is waited for.
    rules = round_rules(cfg)
    cohorts = Cohorts.from_config(cfg, rules)
    server_optimizer(cfg["strategy"], [])
    resumed = _resumed(cfg)
    trained = trained_state(cfg["init_from"]) if cfg.get("init_from") else None
    roster, failures = Roster(), list(resumed.failures) if resumed else []
    if resumed:  # the same merchants keep the same indices, so their batch orders replay
        roster.index_of_merchant.update(resumed.merchant_indices)
    first = resumed.round + 1 if resumed else 0
    experiment = set_up_federation(grid, cfg, roster, failures, cohorts, first,
                                   RunPlan.from_json(resumed.plan) if resumed else None, directory)
    cfg = experiment.cfg  # select_round and train.*=auto resolved now that the data's tasks and rows are known
    rules = round_rules(cfg)  # again: federation.row_normalization=auto reads the resolved train settings
    plan = ConfigRecord({protocol.PLAN: experiment.plan.to_json()})
    model, weighting = experiment.new_model(), experiment.new_weighting()
    row_tables = averaged_by_rows(model, cfg)
    row_totals = RowTotals({name: model.embedding.tables[column].num_embeddings
                            for name, (column, task) in model.id_tables().items() if task is None and name in row_tables})
    optimizer = server_optimizer(cfg["strategy"], _optimised(model, cfg))
    privacy = PrivateRounds.from_config(cfg)
    # The loop draws each phase's nodes (`cohorts`, which sets them up first) and hands the strategy
    # exactly those: it addresses every node in `participants`.
    strategy = MultiTaskFedAvg(
        joint_owners(model, weighting), roster.merchant, failures, row_tables,
        newton_settings(cfg["train"], experiment.tasks) if newton_fit(cfg["train"]) else None,
        rules=rules, server_opt=optimizer, combine=privacy.combine,
        compression=check_compression(str(fed.get("compression", "none"))),
        unsent=newton_fitted(model, cfg["train"]), row_totals=row_totals,
        fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1,
    )
    arrays = ArrayRecord(joint_state(model, weighting))
    if trained is not None:
        arrays = numpy_to_arrays(initial_arrays(arrays_to_numpy(arrays), trained, cfg["init_from"]))
        log(INFO, "init_from: starting from the trained model in %s", cfg["init_from"])
    rounds: list[RoundRecord] = []
    keeper: RoundKeeper[ArrayRecord] = RoundKeeper.from_config(cfg)
    average: RoundAverage[dict] = RoundAverage.from_config(cfg["train"])
    n_rounds = int(fed["rounds"])
    if resumed:
        arrays, rounds = numpy_to_arrays(resumed.arrays), list(resumed.rounds)
        optimizer.state = resumed.optimizer
        row_totals.restore(resumed.row_totals)
        average.average = resumed.averaged
        # Under select_round=last with no round left to play, the model kept is the one last scored: the
        # rounds' average where there is one, not the trained arrays.
        keeper.restore(resumed.keeper, None if resumed.kept_arrays is None else numpy_to_arrays(resumed.kept_arrays),
                       lambda: arrays if average.average is None else numpy_to_arrays(average.average))
        restore_rng(resumed.rng)
        log(INFO, "resume: continuing %s after round %d", cfg["resume"], resumed.round)

    def evaluate(server_round: int, state: ArrayRecord, final: bool = False) -> Evaluation:
        strategy.participants = evaluated(grid, roster, cohorts, failures, server_round, timeout)
        config = ConfigRecord({**plan, protocol.RANKING: int(wants_ranking(cfg, final))})
        replies = _exchange(grid, strategy.configure_evaluate(server_round, state, config, grid),
                            timeout, server_round, "evaluate", roster, failures)
        strategy.aggregate_evaluate(server_round, replies)
        return strategy.evaluations[server_round]

    losses: dict[str, float] = {}
    refit_embeddings = embedding_newton(cfg["train"])  # a query after each average (tasks/embedding_newton.py)
    for server_round in range(first, n_rounds + 1):
        if keeper.stop:
            break
        if server_round:
            identify_newcomers(grid, roster, failures, server_round, timeout, directory)
            connected = list(grid.get_node_ids())
            n_nodes = len(roster.identified(connected))
            if not privacy.may_play(server_round, sample_count(n_nodes, cohorts.fraction_train, cohorts.per_round),
                                    n_nodes):
                break
            strategy.participants = addressed(grid, roster, cohorts.train(roster, connected, server_round), failures,
                                              server_round, timeout)
            messages = strategy.configure_train(server_round, arrays, plan, grid)
            if privacy.settings.mode == "secagg":  # the server sees only the sum (server_app/secure_round.py)
                new_arrays, flats = secure_train_round(grid, list(messages), arrays, strategy.parameter_tasks,
                                                       max(s.rows["train"] for s in roster.summaries.values()),
                                                       cfg["privacy"], timeout, failures, roster.merchant)
                train_metrics = combined_train_metrics(flats)
            else:
                replies = _exchange(grid, messages, timeout, server_round, "train", roster, failures)
                new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
                if new_arrays is not None and refit_embeddings and server_round >= first_deep_round(cfg["train"]):
                    replies = _exchange(grid, strategy.configure_curvature(server_round, new_arrays, plan), timeout,
                                        server_round, "curvature", roster, failures)
                    new_arrays = strategy.aggregate_curvature(server_round, replies, new_arrays,
                                                              embedding_newton_settings(cfg["train"]))
            if new_arrays is not None:
                arrays = new_arrays
                privacy.spend(server_round)
            losses = {t: m["loss"] for t, m in unflatten(dict(train_metrics or {})).items() if "loss" in m}
        # Training goes on from `arrays`; what is scored, kept and saved is their average over rounds.
        scored = numpy_to_arrays(average.offer(server_round, arrays_to_numpy(arrays))) \
            if average.averages(server_round) else arrays
        evaluation = evaluate(server_round, scored)
        priors = named_priors(strategy.priors_taken, experiment.first_order_columns) if server_round else {}
        rounds.append(RoundRecord(server_round, evaluation.overall, losses, evaluation.validation, privacy.record(),
                                  priors))
        progress.report(rounds[-1], experiment.metric_names, evaluation.per_merchant)
        keeper.offer(server_round, selection_loss([r.validation for r in rounds], experiment.tasks), lambda: scored)
        if output_dir is not None:
            write_checkpoint(Path(output_dir) / CHECKPOINT, _checkpoint(
                server_round, arrays, optimizer, rounds, keeper, experiment, roster, failures, started_with, row_totals,
                average))

    # The kept model, scored once more with ranking, as the evaluation after the last round played.
    kept_arrays = keeper.state
    state = {k: torch.from_numpy(v.copy()) for k, v in arrays_to_numpy(kept_arrays).items()}
    last_played = rounds[-1].round
    state, prior_heads, calibration = experiment.finish(  # each validation pass: one evaluate round of every node
        state, {r.round: r.validation for r in rounds}, keeper.round,
        lambda candidate: evaluate(last_played + 1, numpy_to_arrays({k: v.numpy() for k, v in candidate.items()})).validation)

    def refit_statistics(candidate: dict[str, torch.Tensor], part: str) -> dict:
        """Every evaluated node's train and validation rows' `part` sums at `candidate`, summed; none where
        no node answered usefully: the trained run then keeps its model as finished, it does not fail."""
        strategy.participants = evaluated(grid, roster, cohorts, failures, last_played + 1, timeout)
        arrays_sent = numpy_to_arrays({k: v.numpy() for k, v in candidate.items()})
        try:
            replies = _exchange(grid, strategy.configure_refit(
                last_played + 1, arrays_sent, ConfigRecord({**plan, protocol.REFIT_PART: part})), timeout,
                last_played + 1, "refit", roster, failures)
            return strategy.aggregate_refit(last_played + 1, replies, arrays_sent, part)
        except RoundFailed as exc:
            log(WARNING, "refit (%s): %s; the kept model keeps those parameters as they are", part, exc)
            return {}

    # a query of every node a step
    state, refit_steps, embedding_steps = experiment.refit(state, prior_heads, refit_statistics)
    if prior_heads or calibration or refit_steps or embedding_steps:
        kept_arrays = numpy_to_arrays({k: v.numpy() for k, v in state.items()})
    kept = evaluate(rounds[-1].round + 1, kept_arrays, final=True)
    return RunResult(
        mode="federated", tasks=experiment.task_names, rounds=rounds, final=kept.overall,
        per_merchant=kept.per_merchant, selected_round=keeper.round, model_state=state, config=dict(cfg),
        oracle=oracle_of(roster, experiment, kept.per_merchant), failures=failures, plan=asdict(experiment.plan),
        merchant_rows={m: s.rows["train"] for m, s in sorted(roster.summaries.items())},
        bad_rows=pooled_bad_rows(roster.summaries.values()), prior_heads=prior_heads, calibration=calibration,
        refit_steps=refit_steps, embedding_refit_steps=embedding_steps,
    )
