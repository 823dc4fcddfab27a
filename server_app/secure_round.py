"""A training round under secure aggregation (privacy=secagg): Flower's SecAgg+ protocol gives the
server only the sum of the merchants' weighted vectors, and core/secure_sum.py turns that sum into the
multi-task average.

Flower 1.42 offers SecAgg+ only as the legacy `SecAggPlusWorkflow`, which needs a `LegacyContext`
holding a legacy `Strategy` (FitIns out, FitRes in) and runs a whole round itself (setup, share
keys, collect masked vectors, unmask: four TRAIN exchanges). So each training round builds that
context around the grid, with a legacy strategy that only addresses the nodes (and messages) the
MultiTaskFedAvg strategy chose and keeps the unmasked result; setup, evaluation and the rest of the
round loop stay on the Message API.
"""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any, Callable, Mapping

import flwr.compat.common.recorddict_compat as compat
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key as WorkflowKey
from flwr.serverapp import Grid

from core import protocol
from core.secure_sum import decode_sum
from server_app.setup import failure
from server_app.strategy import RoundFailed, arrays_to_numpy, numpy_to_arrays


class _OneSecureRound(Strategy):
    """The legacy strategy SecAggPlusWorkflow drives: it sends the given instructions and keeps what
    comes back (every result's parameters are the one unmasked mean by then)."""

    def __init__(self, instructions: list) -> None:
        self.instructions = instructions
        self.results: list = []
        self.failures: list = []

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return self.instructions

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = list(results), list(failures)
        return (self.results[0][1].parameters if self.results else None), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def secure_train_round(grid: Grid, messages: list[Message], arrays: ArrayRecord, owners: Mapping[str, str | None],
                       weight_bound: float, privacy: Mapping[str, Any], timeout: float,
                       failures: list[dict[str, Any]], merchant_of: Callable[[int], str | None]
                       ) -> tuple[ArrayRecord, list[dict[str, float]]]:
    """The new global arrays from one SecAgg+ round over the nodes `messages` address (the train
    messages MultiTaskFedAvg built), and each answering merchant's train metrics (sent in the clear).
    A node whose masked vector did not make it into the sum goes into `failures` with its merchant."""
    if len(messages) < 2:
        raise RoundFailed(f"privacy=secagg needs at least 2 merchants per round, got {len(messages)}")
    current = arrays_to_numpy(arrays)
    run_id = grid.run.run_id
    instructions = []
    for msg in messages:
        config = dict(msg.content.config_records[protocol.CONFIG])
        config[protocol.WEIGHT_BOUND] = float(weight_bound)
        parameters = ndarrays_to_parameters([current[name] for name in current])
        instructions.append((GridClientProxy(msg.metadata.dst_node_id, grid, run_id), FitIns(parameters, config)))
    strategy = _OneSecureRound(instructions)
    context = LegacyContext(Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            strategy=strategy, client_manager=SimpleClientManager())
    server_round = int(messages[0].content.config_records[protocol.CONFIG][protocol.SERVER_ROUND])
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(instructions[0][1].parameters,
                                                                                       keep_input=True)
    SecAggPlusWorkflow(num_shares=float(privacy["num_shares"]),
                       reconstruction_threshold=float(privacy["reconstruction_threshold"]),
                       max_weight=1.0, clipping_range=float(privacy["clipping_range"]), timeout=timeout)(grid, context)
    if strategy.failures:
        log(WARNING, "round %d: %d SecAgg+ failure(s): %s", server_round, len(strategy.failures), strategy.failures[0])
    summed_nodes = {proxy.node_id for proxy, _ in strategy.results}
    for proxy, _ in instructions:
        if proxy.node_id not in summed_nodes:
            failures.append(failure(server_round, proxy.node_id, merchant_of(proxy.node_id),
                                    "dropped out of the SecAgg+ round: its masked vector is not in the sum"))
            log(WARNING, "round %d train: node %d (merchant %s) dropped out of the SecAgg+ round", server_round,
                proxy.node_id, failures[-1]["merchant"] or "?")
    if not strategy.results:
        raise RoundFailed(f"round {server_round}: the SecAgg+ round produced no aggregate (see the log above)")
    mean = parameters_to_ndarrays(strategy.results[0][1].parameters)  # the unmasked mean of the vectors
    summed = [array * len(strategy.results) for array in mean]
    log(INFO, "round %d: SecAgg+ summed %d merchants' masked vectors", server_round, len(strategy.results))
    return numpy_to_arrays(decode_sum(summed, current, owners)), [dict(fitres.metrics) for _, fitres in strategy.results]
