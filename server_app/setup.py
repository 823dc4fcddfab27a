"""The setup exchange: a query to each new node, answered with its data's aggregates, never rows.

The Flower shell only: what a reply holds is `data.summary`, how the server combines the replies is
`tasks.plan`, and who is who is `roster`.
"""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any, Iterable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from core import protocol
from data.summary import DataSummary
from server_app.roster import Roster
from tasks.metrics import split_counts, unflatten


def failure(server_round: int, node: int, merchant: str | None, reason: str) -> dict[str, Any]:
    """One entry of metrics.json `failures`: the last line of the reason, never a traceback."""
    lines = (reason or "?").strip().splitlines() or ["?"]
    return {"round": server_round, "node": node, "merchant": merchant, "reason": lines[-1]}


def addressees(sent: Iterable[Message]) -> dict[str, int]:
    """Message id -> the node it was sent to (ids are set when the grid pushes the messages)."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in sent}


def node_of(reply: Message, sent_to: dict[str, int]) -> int:
    """The node a reply answers for: Flower answers for a node it marked offline with an error from
    the SuperLink's own id, so the reply is matched to the message it answers."""
    return sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def set_up_newcomers(grid: Grid, roster: Roster, failures: list[dict[str, Any]], server_round: int,
                     timeout: float) -> int:
    """Query every connected node not seen before; admit those that answer with a summary.

    Returns how many were queried. A node that refuses (bad data file) or does not answer is
    recorded as a failure of that node; it is not asked again.
    """
    nodes = roster.newcomers(grid.get_node_ids())
    if not nodes:
        return 0
    queries = [Message(RecordDict({protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: server_round})}),
                       dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    replies = list(grid.send_and_receive(queries, timeout=timeout))
    sent_to = addressees(queries)
    replies = {node_of(reply, sent_to): reply for reply in replies}
    joined = []
    for node in nodes:
        reply = replies.get(node)
        if reply is None:
            why, merchant = f"no setup reply within {timeout:.0f} s", None
        elif reply.has_error():
            why, merchant = reply.error.reason, None
        else:
            setup = reply.content.config_records[protocol.SETUP]
            if protocol.SETUP_ERROR in setup:
                why, merchant = str(setup[protocol.SETUP_ERROR]), str(setup[protocol.MERCHANT_ID]) or None
            else:
                summary = DataSummary.from_flat(dict(setup))
                joined.append((node, summary))
                if protocol.ORACLE in reply.content.metric_records:
                    roster.oracle[summary.merchant_id] = split_counts(
                        unflatten(reply.content.metric_records[protocol.ORACLE]))
                continue
        roster.refuse(node)
        failures.append(failure(server_round, node, merchant, why))
        log(WARNING, "setup: node %d (merchant %s) cannot take part: %s", node, merchant or "?",
            failures[-1]["reason"])
    roster.admit(joined)
    for node, summary in joined:
        log(INFO, "setup: node %d is merchant %s (%d train rows)", node, summary.merchant_id, summary.rows["train"])
    return len(nodes)
