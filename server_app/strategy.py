"""MultiTaskFedAvg: Flower's FedAvg with task-aware aggregation; the math is in `aggregation`."""

from __future__ import annotations

from dataclasses import dataclass, field
from logging import WARNING
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from core import protocol
from core.update_codec import decode_update
from server_app.aggregation import ClientUpdate, RowCounts, RowTotals, aggregate
from server_app.replies import RoundRules, reply_problem, required_replies, statistics_problem
from server_app.server_opt import ServerOptimizer
from server_app.setup import addressees, failure, node_of
from tasks.embedding_newton import embedding_newton_update, unpack_statistics
from tasks.metrics import Metrics, combine_counted, combine_merchants, flatten, split_counts, unflatten
from tasks.wide import WideStats, newton_update, sum_statistics


class RoundFailed(RuntimeError):
    """Too few clients of a round succeeded (federation.min_replies), so the round cannot count."""


@dataclass
class Evaluation:
    overall: dict[str, Metrics]                              # test, merchants combined
    per_merchant: dict[str, dict[str, Metrics]]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    validation: dict[str, Metrics] = field(default_factory=dict)  # validation, merchants combined, with label counts


def arrays_to_numpy(record: ArrayRecord) -> dict:
    return {name: array.numpy() for name, array in record.items()}


def numpy_to_arrays(arrays: Mapping) -> ArrayRecord:
    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


def _records(content: RecordDict, key: str) -> dict[str, np.ndarray]:
    records = content.array_records
    return arrays_to_numpy(records[key]) if key in records else {}


def _row_counts(content: RecordDict) -> dict[str, RowCounts]:
    return {name: (pair[0], pair[1]) for name, pair in _records(content, protocol.ROW_COUNTS).items()}


def _wide_stats(content: RecordDict) -> WideStats:
    return {name: (stacked[0].astype(np.int64), stacked[1], stacked[2])
            for name, stacked in _records(content, protocol.WIDE_STATS).items()}


def _embedding_stats(current: Mapping[str, np.ndarray]) -> Callable[[RecordDict], WideStats | str]:
    """A reply's embedding statistics (tasks/embedding_newton.py pack_statistics), or why they do not
    fit the embedding tables of `current`."""
    tables = {name for name in current if name.startswith("embedding.tables.")}

    def parse(content: RecordDict) -> WideStats | str:
        stats = unpack_statistics(_records(content, protocol.EMBEDDING_STATS))
        return stats if set(stats) <= tables else \
            f"embedding statistics for {sorted(set(stats) - tables)[:3]}, which are not embedding tables"
    return parse


def train_update(reply: RecordDict, current: Mapping[str, np.ndarray] | None, compression: str = "none",
                 unsent: Collection[str] = ()) -> tuple[ClientUpdate, WideStats] | str:
    """A train reply's content as (update, Newton statistics), or why it cannot be aggregated; its
    arrays are decoded against the global model the node was sent (core/update_codec.py), the
    `unsent` ones it left out (the node never changes them) taken as that global model's."""
    try:
        rows, stats = _row_counts(reply), _wide_stats(reply)
        encoded = arrays_to_numpy(reply.array_records[protocol.ARRAYS])
        arrays, row_values = encoded, {}
        if current is not None:
            arrays, row_values = decode_update(current, encoded, _records(reply, protocol.TABLE_ROWS),
                                               {name: ids for name, (ids, _) in rows.items()},
                                               _records(reply, protocol.SCALES), compression)
            arrays.update({name: current[name] for name in unsent if name not in arrays and name in current})
        flat = reply.metric_records[protocol.METRICS]
        _, task_counts = split_counts(unflatten(flat))
        update = ClientUpdate(arrays, int(flat[protocol.NUM_EXAMPLES]), task_counts, rows, row_values)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return f"malformed reply ({type(exc).__name__}: {exc})"
    problem = reply_problem(current if current is not None else arrays, arrays, rows, stats, row_values)
    return problem if problem is not None else (update, stats)


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
    `newton` = (prior rows per task, damping, step bounds: tasks/wide.py newton_settings) the first-order
    biases take a Newton step on the replies' summed statistics. `rules` reject unusable replies (replies.py);
    `server_opt` then steps from the global model towards the aggregate (server_opt.py). `combine`
    (default: aggregation.aggregate) turns the updates into new arrays; the privacy options pass their
    own (server_app/privacy.py). Replies are decoded by core/update_codec.py (`compression`; a row
    table may come as its trained rows only, a Newton-fitted bias (`unsent`) not at all). `row_totals`
    sums the merchants' embedding row counts and goes out with every train request. Under
    train.embedding_newton a round then queries its contributors at the aggregate
    (`configure_curvature`) and moves the embedding rows by a Newton step on their summed statistics
    (`aggregate_curvature`, tasks/embedding_newton.py).
    """

    def __init__(self, parameter_tasks: Mapping[str, str | None], merchant_of: Callable[[int], str | None],
                 failures: list[dict[str, Any]], row_tables: Iterable[str] = (),
                 newton: tuple[Mapping[str, float], float, Mapping[str, float]] | None = None,
                 rules: RoundRules = RoundRules(),
                 server_opt: ServerOptimizer | None = None, combine: Callable[..., dict] = aggregate,
                 compression: str = "none", unsent: Iterable[str] = (), row_totals: RowTotals | None = None,
                 **fedavg_options) -> None:
        super().__init__(**fedavg_options)
        self.parameter_tasks = dict(parameter_tasks)
        self.merchant_of = merchant_of
        self.failures = failures
        self.row_tables = list(row_tables)
        self.newton = newton
        self.rules = rules
        self.server_opt = server_opt
        self.combine = combine
        self.compression = compression
        self.unsent = set(unsent)
        self.row_totals = row_totals
        self.priors_taken: dict[str, float] = {}  # the last train round's Newton step's (newton_update)
        self.participants: dict[int, int] = {}
        self.contributors: dict[int, int] = {}  # the latest train round's nodes whose update was aggregated
        self.sent: list[Message] = []  # the latest phase's messages, to tell which node a reply answers for
        self.evaluations: dict[int, Evaluation] = {}
        self._global: ArrayRecord | None = None

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, message_type: str,
                  extra: Mapping[str, ArrayRecord] | None = None) -> list[Message]:
        """One message to every node in `participants` (the loop drew them: server_app/cohorts.py)."""
        self.sent = [Message(RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: ConfigRecord(
                         {**config, protocol.SERVER_ROUND: server_round, protocol.MERCHANT_INDEX: self.participants[node]}),
                                         **(extra or {})}),
                             dst_node_id=node, message_type=message_type) for node in sorted(self.participants)]
        return self.sent

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = arrays  # kept for parameters no client trains this round
        extra = {}
        if self.row_totals is not None and self.row_totals.totals:
            extra[protocol.ROW_TOTALS] = ArrayRecord({name: Array(total.astype(np.float32))
                                                      for name, total in self.row_totals.totals.items()})
        return self._messages(server_round, arrays, config, MessageType.TRAIN, extra)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, MessageType.EVALUATE)

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
                self._reject(server_round, m, phase, m.error.reason)
        if replies and not ok:
            raise RoundFailed(f"round {server_round}: every one of {len(replies)} clients failed to {phase}; "
                              f"first error: {failure(0, 0, None, replies[0].error.reason)['reason']}")
        return ok

    def _reject(self, server_round: int, reply: Message, phase: str, reason: str) -> None:
        """Record and log a reply that is not used: an error, or an update that cannot be aggregated."""
        node = self.node_of(reply)
        merchant = self._merchant_of_reply(reply) if not reply.has_error() else self.merchant_of(node)
        self.failures.append(failure(server_round, node, merchant, reason))
        log(WARNING, "round %d %s: node %d (merchant %s) failed: %s", server_round, phase, node,
            merchant or "?", self.failures[-1]["reason"])

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.priors_taken = {}
        ok = self._successful(server_round, replies, "train")
        if not ok:
            return None, None
        current = arrays_to_numpy(self._global) if self._global is not None else None
        updates, wide, flats = [], [], []
        self.contributors = {}
        for msg in ok:
            parsed = train_update(msg.content, current, self.compression, self.unsent)
            if isinstance(parsed, str):
                self._reject(server_round, msg, "train", f"update rejected: {parsed}")
                continue
            update, stats = parsed
            if self.row_totals is not None:
                self.row_totals.add(self._merchant_of_reply(msg), update.row_counts)
            flats.append(msg.content.metric_records[protocol.METRICS])
            node = self.node_of(msg)
            self.contributors[node] = self.participants.get(node, 0)
            updates.append(update)
            wide.append(stats)
        needed = required_replies(self.rules.min_replies, len(self.sent))
        if len(updates) < needed:
            raise RoundFailed(f"round {server_round}: {len(updates)} of {len(self.sent)} clients sent a usable "
                              f"update, federation.min_replies={self.rules.min_replies:g} needs {needed}; "
                              f"latest failure: {self.failures[-1]['reason'] if self.failures else '?'}")
        current = current if current is not None else updates[0].arrays
        arrays = self.combine(current, updates, self.parameter_tasks, self.row_tables, self.rules.aggregation,
                              self.rules.trim_fraction, self.rules.row_progress_power)
        if self.newton is not None and any(wide):
            arrays.update(newton_update(current, sum_statistics(wide), *self.newton, priors_taken=self.priors_taken))
        if self.server_opt is not None:
            arrays = self.server_opt.step(current, arrays)
        return numpy_to_arrays(arrays), combined_train_metrics(flats)

    def configure_curvature(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> list[Message]:
        """The round's averaged model to the nodes whose updates made it: each sums its train rows'
        embedding statistics there (train.embedding_newton)."""
        self.participants = dict(self.contributors)
        return self._messages(server_round, arrays, config, f"{MessageType.QUERY}.{protocol.CURVATURE}")

    def aggregate_curvature(self, server_round: int, replies: Iterable[Message], arrays: ArrayRecord,
                            settings: tuple[float, float]) -> ArrayRecord:
        """The averaged model with its embedding rows moved by one Newton step on the replies' summed
        statistics (tasks/embedding_newton.py; `settings` = its prior and damping); an unusable reply is
        rejected and the step taken on the others' sums."""
        current = arrays_to_numpy(arrays)
        parts = self._statistics(server_round, replies, "curvature", "embedding", current, _embedding_stats(current))
        if parts:
            current.update(embedding_newton_update(current, sum_statistics(parts), *settings))
        return numpy_to_arrays(current)

    def configure_refit(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> list[Message]:
        """The finished model to the nodes in `participants`: each sums its train and validation rows'
        statistics of the part `config` names there (protocol.REFIT_PART; tasks/experiment.py refit)."""
        return self._messages(server_round, arrays, config, f"{MessageType.QUERY}.{protocol.REFIT}")

    def aggregate_refit(self, server_round: int, replies: Iterable[Message], arrays: ArrayRecord, part: str
                        ) -> WideStats:
        """The usable replies' statistics of `part` summed, as if every merchant's rows were one shard's."""
        current = arrays_to_numpy(arrays)
        if part == protocol.REFIT_EMBEDDING:
            parse, kind = _embedding_stats(current), "embedding"
        else:
            parse, kind = _wide_stats, "bias"
        return sum_statistics(self._statistics(server_round, replies, "refit", kind, current, parse))

    def _statistics(self, server_round: int, replies: Iterable[Message], phase: str, kind: str,
                    current: Mapping[str, np.ndarray], parse: Callable[[RecordDict], WideStats | str]
                    ) -> list[WideStats]:
        """Each successful reply's `kind` statistics (`parse`: its content -> them, or why not); one that
        does not fit the global model is rejected, the others kept."""
        parts = []
        for msg in self._successful(server_round, replies, phase):
            try:
                stats = parse(msg.content)
                problem = stats if isinstance(stats, str) else statistics_problem(current, stats, kind)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                problem = f"malformed reply ({type(exc).__name__}: {exc})"
            if problem is not None:
                self._reject(server_round, msg, phase, f"statistics rejected: {problem}")
                continue
            parts.append(stats)
        return parts

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
        self.evaluations[server_round] = Evaluation(overall, per_merchant, counts, combine_counted(val, val_counts))
        return MetricRecord(flatten(overall))


