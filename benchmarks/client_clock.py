"""The clients' own time in a simulation: a Flower mod around every handler of the real ClientApp
appends (message type, start, seconds, pid) to a file, one line a message, from inside the Ray
actor that ran it. What a client does (load its data, build the model, train or score) is in the
seconds; Flower's and Ray's transport, queueing and the server's work are not."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from flwr.app import Context, Message


def clock_mod(path: str | Path) -> Callable[[Message, Context, Callable], Message]:
    target = str(path)

    def mod(msg: Message, context: Context, call_next: Callable) -> Message:
        start = time.time()
        began = time.perf_counter()
        try:
            return call_next(msg, context)
        finally:
            seconds = time.perf_counter() - began
            with open(target, "a") as handle:
                handle.write(f"{msg.metadata.message_type}\t{start:.6f}\t{seconds:.6f}\t{os.getpid()}\n")
    return mod


def client_seconds(path: str | Path) -> dict[str, float]:
    """Message type -> the clients' summed handler seconds (and 'messages' -> how many)."""
    totals: dict[str, float] = defaultdict(float)
    path = Path(path)
    if not path.is_file():
        return dict(totals)
    for line in path.read_text().splitlines():
        kind, _, seconds, _ = line.split("\t")
        totals[kind] += float(seconds)
        totals["messages"] += 1
    return dict(totals)


def first_start(path: str | Path) -> float | None:
    """Wall-clock time (time.time) the first client handler began: Ray's actors were up by then."""
    path = Path(path)
    if not path.is_file():
        return None
    starts = [float(line.split("\t")[1]) for line in path.read_text().splitlines()]
    return min(starts) if starts else None
