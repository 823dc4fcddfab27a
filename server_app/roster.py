"""Who is in the federation: which node is which merchant, and which nodes are set up.

Plain bookkeeping, no Flower. A node is first *identified* (its merchant id, nothing else: cheap, for
every node, so that sampling can go by merchant) and *set up* (its data prepared, its summary learned)
only when a round first addresses it: set-up grows with the merchants the rounds use, not with every
merchant connected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from data.summary import DataSummary
from tasks.metrics import Metrics


@dataclass
class Roster:
    merchant_of_node: dict[int, str] = field(default_factory=dict)    # identified nodes (the latest per merchant)
    index_of_merchant: dict[str, int] = field(default_factory=dict)   # stable: first identified, never reused
    summaries: dict[str, DataSummary] = field(default_factory=dict)   # set-up merchant -> its data's aggregates
    ready: set[int] = field(default_factory=set)                      # set-up nodes
    oracle: dict[str, tuple[Metrics, dict[str, int]]] = field(default_factory=dict)  # merchant -> (metrics, counts)
    refused: set[int] = field(default_factory=set)                    # nodes whose identify or set-up failed

    def newcomers(self, connected: Iterable[int]) -> list[int]:
        """Connected nodes not identified since they connected. A node that left is forgotten first, so one
        that comes back (with SuperNode auth it keeps its id) is asked again: its file may have changed."""
        connected = set(connected)
        for node in [n for n in self.merchant_of_node if n not in connected]:
            del self.merchant_of_node[node]
        self.ready &= connected
        self.refused &= connected
        return sorted(n for n in connected if n not in self.merchant_of_node and n not in self.refused)

    def identify(self, identified: Iterable[tuple[int, str]]) -> None:
        """Identified nodes get their merchant's index in merchant order, so the first federation's indices
        follow merchant ids. A merchant that answers from a new node replaces its old one (a restarted
        SuperNode), which must then be set up again."""
        identified = sorted(identified, key=lambda pair: pair[1])
        merchants = {merchant for _, merchant in identified}
        for old in [n for n, m in self.merchant_of_node.items() if m in merchants]:
            del self.merchant_of_node[old]
            self.ready.discard(old)
        for node, merchant in identified:
            self.merchant_of_node[node] = merchant
            self.index_of_merchant.setdefault(merchant, len(self.index_of_merchant))

    def admit(self, joined: Iterable[tuple[int, DataSummary]]) -> None:
        """Nodes whose set-up succeeded: their summaries are known, they may train and evaluate."""
        for node, summary in joined:
            self.ready.add(node)
            self.summaries[summary.merchant_id] = summary

    def refuse(self, node: int) -> None:
        self.refused.add(node)
        self.ready.discard(node)

    def identified(self, connected: Iterable[int]) -> dict[int, int]:
        """Connected identified nodes -> their merchant's index, in node order: the population a round
        draws from. A node whose set-up failed keeps its place in the draw (see `usable`), so which
        merchants a round draws depends on who is connected, never on who failed before."""
        return {n: self.index_of_merchant[self.merchant_of_node[n]] for n in sorted(connected)
                if n in self.merchant_of_node}

    def usable(self, nodes: dict[int, int]) -> dict[int, int]:
        """The set-up, unrefused ones of `nodes` (node -> merchant index): who actually gets the message."""
        return {n: index for n, index in nodes.items() if n in self.ready and n not in self.refused}

    def unprepared(self, nodes: Iterable[int]) -> list[int]:
        """The nodes of `nodes` still to set up (neither set up nor refused)."""
        return sorted(n for n in nodes if n not in self.ready and n not in self.refused)

    def merchant(self, node: int) -> str | None:
        return self.merchant_of_node.get(node)
