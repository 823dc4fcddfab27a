"""A pass-through wrapper around Flower's grid that keeps every message sent and every reply reaching
the server and, per exchange, its message type, wall seconds and serialized bytes each way: what the
wire tests check and what the SecAgg+ cost is measured from. Hand it to `run_federated_simulation(..., grid_view=...)`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from flwr.app import Message, RecordDict
from flwr.common.serde import recorddict_to_proto


def content_bytes(message: Message | RecordDict) -> int:
    """The serialized size of a message's content (what travels, less the envelope)."""
    if isinstance(message, RecordDict):
        return recorddict_to_proto(message).ByteSize()
    return 0 if message.has_error() else recorddict_to_proto(message.content).ByteSize()


@dataclass
class Exchange:
    message_type: str
    seconds: float
    bytes_out: int
    bytes_in: int


@dataclass
class RecordingGrid:
    grid: Any
    received: list[Message] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        self.sent.extend(messages)
        out = sum(recorddict_to_proto(m.content).ByteSize() for m in messages)
        start = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        seconds = time.perf_counter() - start
        self.received.extend(replies)
        kind = messages[0].metadata.message_type if messages else "?"
        self.exchanges.append(Exchange(kind, seconds, out, sum(content_bytes(r) for r in replies)))
        return replies

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        self.received.extend(replies)
        return replies
