"""The setup exchanges: who a node is (its merchant id, for every node) and, when a round first
addresses it, its data's aggregates (never rows).

The Flower shell only: what a reply holds is `data.summary`, how the server combines the replies is
`tasks.plan`, and who is who is `roster`.
"""

from __future__ import annotations

from logging import DEBUG, INFO, WARNING
from typing import Any, Callable, Iterable

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


# (node ids) -> {node: merchant id} for the nodes it knows, without a message: in a simulation, the
# launcher's record of which partition Flower gave each node (launch/simulation.py); None elsewhere.
Directory = Callable[[list[int]], dict[int, str]]


def _ask(grid: Grid, nodes: list[int], message_type: str, server_round: int, timeout: float
         ) -> dict[int, Message | None]:
    """One query to each node; node -> its reply (None: none within `timeout`)."""
    queries = [Message(RecordDict({protocol.CONFIG: ConfigRecord({protocol.SERVER_ROUND: server_round})}),
                       dst_node_id=node, message_type=message_type) for node in nodes]
    replies = list(grid.send_and_receive(queries, timeout=timeout))
    sent_to = addressees(queries)
    answered = {node_of(reply, sent_to): reply for reply in replies}
    return {node: answered.get(node) for node in nodes}


def _refuse(roster: Roster, failures: list[dict[str, Any]], server_round: int, node: int, merchant: str | None,
            why: str) -> None:
    roster.refuse(node)
    failures.append(failure(server_round, node, merchant, why))
    log(WARNING, "setup: node %d (merchant %s) cannot take part: %s", node, merchant or "?", failures[-1]["reason"])


def identify_newcomers(grid: Grid, roster: Roster, failures: list[dict[str, Any]], server_round: int,
                       timeout: float, directory: Directory | None = None) -> int:
    """Learn the merchant of every connected node not seen before: from `directory` where it knows the
    node, else by a light query (the node's merchant id only; nothing is read beyond that id). Returns
    how many nodes were new. A node that cannot say is recorded as a failure and not asked again."""
    nodes = roster.newcomers(grid.get_node_ids())
    if not nodes:
        return 0
    known = directory(nodes) if directory is not None else {}
    asked = [n for n in nodes if n not in known]
    identified = list(known.items())
    for node, reply in (_ask(grid, asked, f"{MessageType.QUERY}.{protocol.IDENTIFY}", server_round, timeout).items()
                        if asked else ()):
        answer, why, merchant = _answer(reply, protocol.MERCHANT, "identify", timeout)
        if answer is None:
            _refuse(roster, failures, server_round, node, merchant, why)
        else:
            identified.append((node, str(answer[protocol.MERCHANT_ID])))
    roster.identify(identified)
    log(INFO, "identify: %d new node(s), %d by the simulation's directory, %d asked", len(nodes), len(known),
        len(asked))
    return len(nodes)


def _answer(reply: Message | None, record: str, phase: str, timeout: float
            ) -> tuple[ConfigRecord | None, str, str | None]:
    """(the reply's `record`, "", None), or (None, why the node cannot take part, the merchant it named)."""
    if reply is None:
        return None, f"no {phase} reply within {timeout:.0f} s", None
    if reply.has_error():
        return None, reply.error.reason, None
    answer = reply.content.config_records[record]
    if protocol.SETUP_ERROR in answer:
        return None, str(answer[protocol.SETUP_ERROR]), str(answer[protocol.MERCHANT_ID]) or None
    return answer, "", None


def set_up_nodes(grid: Grid, roster: Roster, nodes: Iterable[int], failures: list[dict[str, Any]],
                 server_round: int, timeout: float) -> int:
    """Set up the identified nodes of `nodes` not set up yet: each prepares its data and answers with its
    aggregates, never rows. Returns how many were asked. A node that refuses (bad data file), does not
    answer or answers for another merchant than it identified as is recorded as a failure of that node;
    it is not asked again."""
    nodes = roster.unprepared(nodes)
    if not nodes:
        return 0
    joined = []
    for node, reply in _ask(grid, nodes, MessageType.QUERY, server_round, timeout).items():
        merchant = roster.merchant(node)
        setup, why, named = _answer(reply, protocol.SETUP, "setup", timeout)
        if setup is None:
            _refuse(roster, failures, server_round, node, named or merchant, why)
            continue
        summary = DataSummary.from_flat(dict(setup))
        if summary.merchant_id != merchant:
            _refuse(roster, failures, server_round, node, merchant,
                    f"set up as merchant {summary.merchant_id!r}, identified as {merchant!r}")
            continue
        joined.append((node, summary))
        if protocol.ORACLE in reply.content.metric_records:
            roster.oracle[summary.merchant_id] = split_counts(unflatten(reply.content.metric_records[protocol.ORACLE]))
    roster.admit(joined)
    for node, summary in joined:
        log(DEBUG, "setup: node %d is merchant %s (%d train rows)", node, summary.merchant_id, summary.rows["train"])
    log(INFO, "setup: round %d: %d node(s) set up, %d refused", server_round, len(joined), len(nodes) - len(joined))
    return len(nodes)
