"""The identify exchange, a node's side: who it is (its merchant id), and nothing else.

Every node answers it, so it must stay cheap: in simulation the id comes from the partition manifest,
deployed from the node config's `merchant-id` or else the file's merchant column (read alone). The
node's data is prepared later, by the setup query, when a round first addresses the node.
"""

from __future__ import annotations

from typing import Any, Mapping

from flwr.app import ConfigRecord, Message, RecordDict

from client_app.merchant import data_source
from core import protocol
from core.errors import InputError
from data.shards import merchant_of_file


def identify_reply(msg: Message, node_config: Mapping[str, Any], manifest: str | None,
                   cfg: Mapping[str, Any]) -> Message:
    """MERCHANT with this node's merchant id, or why it cannot say (one line)."""
    try:
        path, merchant = data_source(node_config, manifest, cfg["data"])
        answer = {protocol.MERCHANT_ID: merchant if merchant is not None else merchant_of_file(path, cfg["data"])}
    except InputError as exc:
        answer = {protocol.SETUP_ERROR: str(exc), protocol.MERCHANT_ID: ""}
    return Message(RecordDict({protocol.MERCHANT: ConfigRecord(answer)}), reply_to=msg)
