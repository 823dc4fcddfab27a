"""MultiTaskFedAvg: Flower's FedAvg with task-aware aggregation; the math is in `aggregation`."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from core import protocol
from server_app.aggregation import ClientUpdate, RowCounts, aggregate
from server_app.setup import addressees, failure, node_of
from tasks.metrics import Metrics, combine_merchants, flatten, split_counts, unflatten
from tasks.wide import WideStats, newton_update, sum_statistics


class RoundFailed(RuntimeError):
    """Every client of a round failed, so there is nothing to aggregate."""


@dataclass
class Evaluation:
    overall: dict[str, Metrics]                              # test, merchants combined
    per_merchant: dict[str, dict[str, Metrics]]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    validation: dict[str, Metrics] = field(default_factory=dict)  # validation, merchants combined


def arrays_to_numpy(record: ArrayRecord) -> dict:
    return {name: array.numpy() for name, array in record.items()}


def numpy_to_arrays(arrays: Mapping) -> ArrayRecord:
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


def _row_counts(reply: Message) -> dict[str, RowCounts]:
    if protocol.ROW_COUNTS not in reply.content.array_records:
        return {}
    return {name: (pair[0], pair[1]) for name, pair in arrays_to_numpy(reply.content.array_records[protocol.ROW_COUNTS]).items()}


def _wide_stats(reply: Message) -> WideStats:
    if protocol.WIDE_STATS not in reply.content.array_records:
        return {}
    return {name: (stacked[0].astype(np.int64), stacked[1], stacked[2])
            for name, stacked in arrays_to_numpy(reply.content.array_records[protocol.WIDE_STATS]).items()}


def sample_size(nodes: int, fraction: float) -> int:
    """How many of `nodes` a phase addresses at `fraction` (at least one)."""
    return nodes if fraction >= 1.0 or not nodes else max(1, int(nodes * fraction))


def combined_train_metrics(flats: Sequence[Mapping[str, Any]]) -> MetricRecord:
    """The merchants' train losses combined (each task's weighted by its label counts), examples summed."""
    losses, counts = {}, {}
    for k, flat in enumerate(flats):
        losses[str(k)], counts[str(k)] = split_counts(unflatten(dict(flat)))
    metrics = flatten(combine_merchants(losses, counts))
    metrics[protocol.NUM_EXAMPLES] = sum(int(flat[protocol.NUM_EXAMPLES]) for flat in flats)
    return MetricRecord(metrics)


class MultiTaskFedAvg(FedAvg):
    """FedAvg's aggregation hooks with task-aware math, addressed to the nodes the federated loop names.

    The loop sets `participants` (node id -> merchant index) before each phase: only set-up nodes that
    are connected now get a message, so a departed node is not waited for and a newcomer is used.
    Id-indexed tables in `row_tables` are averaged row by row (aggregation.aggregate_rows); with
    `newton` = (prior rows, damping) the first-order biases take a Newton step on the replies' summed
    statistics (tasks/wide.py). `combine` (default: aggregation.aggregate) is the rule that turns the
    updates into new arrays; the privacy options pass their own (server_app/privacy.py).
    """

    def __init__(self, parameter_tasks: Mapping[str, str | None], merchant_of: Callable[[int], str | None],
                 failures: list[dict[str, Any]], row_tables: Iterable[str] = (),
                 newton: tuple[float, float] | None = None, combine: Callable[..., dict] = aggregate,
                 **fedavg_options) -> None:
        super().__init__(**fedavg_options)
        self.parameter_tasks = dict(parameter_tasks)
        self.merchant_of = merchant_of
        self.failures = failures
        self.row_tables = list(row_tables)
        self.newton = newton
        self.combine = combine
        self.participants: dict[int, int] = {}
        self.sent: list[Message] = []  # the latest phase's messages, to tell which node a reply answers for
        self.evaluations: dict[int, Evaluation] = {}
        self._global: ArrayRecord | None = None

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, fraction: float,
                  message_type: str) -> list[Message]:
        nodes = sorted(self.participants)
        if fraction < 1.0 and nodes:
            nodes = sorted(random.sample(nodes, sample_size(len(nodes), fraction)))
        self.sent = [Message(RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: ConfigRecord(
                         {**config, protocol.SERVER_ROUND: server_round, protocol.MERCHANT_INDEX: self.participants[node]})}),
                             dst_node_id=node, message_type=message_type) for node in nodes]
        return self.sent

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = arrays  # kept for parameters no client trains this round
        return self._messages(server_round, arrays, config, self.fraction_train, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, self.fraction_evaluate, MessageType.EVALUATE)

    def node_of(self, reply: Message) -> int:
        return node_of(reply, addressees(self.sent))

    def _merchant_of_reply(self, reply: Message) -> str:
        if not reply.has_error() and protocol.MERCHANT in reply.content.config_records:
            return str(reply.content.config_records[protocol.MERCHANT][protocol.MERCHANT_ID])
        node = self.node_of(reply)
        return self.merchant_of(node) or f"~node-{node}"

    def _successful(self, server_round: int, replies: Iterable[Message], phase: str) -> list[Message]:
        """Replies without errors; errors are recorded with their merchant and logged; a round with no
        success fails."""
        # Replies arrive in any order and node ids are random; ordering by merchant makes the float
        # sums, and so runs, reproducible.
        replies = sorted(replies, key=self._merchant_of_reply)
        ok = [m for m in replies if not m.has_error()]
        for m in replies:
            if m.has_error():
                node = self.node_of(m)
                self.failures.append(failure(server_round, node, self.merchant_of(node), m.error.reason))
                log(WARNING, "round %d %s: node %d (merchant %s) failed: %s", server_round, phase, node,
                    self.merchant_of(node) or "?", self.failures[-1]["reason"])
        if replies and not ok:
            raise RoundFailed(f"round {server_round}: every one of {len(replies)} clients failed to {phase}; "
                              f"first error: {failure(0, 0, None, replies[0].error.reason)['reason']}")
        return ok

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ok = self._successful(server_round, replies, "train")
        if not ok:
            return None, None
        updates, flats = [], [msg.content.metric_records[protocol.METRICS] for msg in ok]
        for msg, flat in zip(ok, flats):
            _, task_counts = split_counts(unflatten(flat))
            updates.append(ClientUpdate(arrays_to_numpy(msg.content.array_records[protocol.ARRAYS]),
                                        int(flat[protocol.NUM_EXAMPLES]), task_counts, _row_counts(msg)))
        current = arrays_to_numpy(self._global) if self._global is not None else updates[0].arrays
        arrays = self.combine(current, updates, self.parameter_tasks, self.row_tables)
        wide = [_wide_stats(msg) for msg in ok]
        if self.newton is not None and any(wide):
            arrays.update(newton_update(current, sum_statistics(wide), *self.newton))
        return numpy_to_arrays(arrays), combined_train_metrics(flats)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        ok = self._successful(server_round, replies, "evaluate")
        if not ok:
            return None
        per_merchant, counts, val, val_counts = {}, {}, {}, {}
        for msg in ok:
            merchant = self._merchant_of_reply(msg)
            records = msg.content.metric_records
            per_merchant[merchant], counts[merchant] = split_counts(unflatten(records[protocol.METRICS]))
            if protocol.VAL_METRICS in records:
                val[merchant], val_counts[merchant] = split_counts(unflatten(records[protocol.VAL_METRICS]))
        overall = combine_merchants(per_merchant, counts)
        self.evaluations[server_round] = Evaluation(overall, per_merchant, counts, combine_merchants(val, val_counts))
        return MetricRecord(flatten(overall))


