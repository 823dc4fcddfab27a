"""The federated run: one Flower client per merchant, multi-task FedAvg, evaluation after every round."""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from core import protocol
from core.errors import InputError
from server_app.outputs import RoundRecord, RunResult, log_round
from server_app.strategy import Evaluation, MultiTaskFedAvg, RoundFailed, arrays_to_numpy
from tasks.experiment import Experiment
from tasks.metrics import unflatten
from tasks.ranking import wants_ranking
from tasks.selection import RoundKeeper, validation_loss
from tasks.state import joint_owners, joint_state
from tasks.wide import averaged_by_rows, newton_fit


def wait_for_merchants(grid: Grid, n_merchants: int, timeout_s: float) -> list[int]:
    """Every merchant is one SuperNode; a federation of another size is a setup error, said plainly."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) == n_merchants:
            return nodes
        if len(nodes) > n_merchants or time.monotonic() > deadline:
            raise InputError(
                f"the federation has {len(nodes)} SuperNode(s) but the data has {n_merchants} merchants; "
                f"run one SuperNode per merchant (simulation: --federation-config 'num-supernodes={n_merchants}')"
            )
        time.sleep(0.5)


def _exchange(grid: Grid, messages, timeout: float, server_round: int, phase: str):
    messages = list(messages)
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    if messages and not replies:
        raise RoundFailed(f"round {server_round}: no client answered the {phase} request within {timeout:.0f} s")
    return replies


def run_federated(grid: Grid, experiment: Experiment) -> RunResult:
    cfg = experiment.cfg
    fed = cfg["federation"]
    merchants = experiment.index.merchant_ids
    wait_for_merchants(grid, len(merchants), float(fed["wait_for_nodes_s"]))
    model, weighting = experiment.new_model(), experiment.new_weighting()
    row_tables = averaged_by_rows(model, cfg)
    strategy = MultiTaskFedAvg(
        joint_owners(model, weighting), row_tables,
        (float(cfg["train"]["bias_l2"]), float(cfg["train"]["newton_damping"])) if newton_fit(cfg["train"]) else None,
        fraction_train=float(fed["fraction_train"]), fraction_evaluate=float(fed["fraction_evaluate"]),
        min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1,
    )
    arrays = ArrayRecord(joint_state(model, weighting))
    timeout = float(fed["round_timeout_s"])
    rounds: list[RoundRecord] = []
    keeper: RoundKeeper[ArrayRecord] = RoundKeeper.from_config(cfg)
    n_rounds = int(fed["rounds"])

    def evaluate(server_round: int, state: ArrayRecord, final: bool = False) -> Evaluation:
        config = ConfigRecord({protocol.RANKING: int(wants_ranking(cfg, final))})
        replies = _exchange(grid, strategy.configure_evaluate(server_round, state, config, grid),
                            timeout, server_round, "evaluate")
        strategy.aggregate_evaluate(server_round, replies)
        return strategy.evaluations[server_round]

    losses: dict[str, float] = {}
    for server_round in range(n_rounds + 1):
        if server_round:
            replies = _exchange(grid, strategy.configure_train(server_round, arrays, ConfigRecord(), grid),
                                timeout, server_round, "train")
            new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
            if new_arrays is not None:
                arrays = new_arrays
            losses = {t: m["loss"] for t, m in unflatten(dict(train_metrics or {})).items() if "loss" in m}
        evaluation = evaluate(server_round, arrays)
        rounds.append(RoundRecord(server_round, evaluation.overall, losses, evaluation.validation))
        log_round(rounds[-1], experiment.metric_names)
        keeper.offer(server_round, validation_loss(evaluation.validation, experiment.tasks, rounds[0].validation),
                     lambda: arrays)
        if keeper.stop:
            break

    # The kept model, scored once more with ranking, as the evaluation after the last round played.
    kept_arrays = keeper.state
    kept = evaluate(rounds[-1].round + 1, kept_arrays, final=True)
    state = {k: torch.from_numpy(v.copy()) for k, v in arrays_to_numpy(kept_arrays).items()}
    return RunResult(
        mode="federated", tasks=experiment.task_names, rounds=rounds, final=kept.overall,
        per_merchant=kept.per_merchant, selected_round=keeper.round, model_state=state, config=dict(cfg),
        failures=[{"round": r, "node": n, "reason": why} for r, n, why in strategy.failures],
    )
