"""Who is in the federation: which node is which merchant, learned from the nodes' setup replies.

Plain bookkeeping, no Flower: the federated loop asks it whom to query and whom to train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from data.summary import DataSummary
from tasks.metrics import Metrics


@dataclass
class Roster:
    merchant_of_node: dict[int, str] = field(default_factory=dict)    # set-up nodes (the latest per merchant)
    index_of_merchant: dict[str, int] = field(default_factory=dict)   # stable: first seen, never reused
    summaries: dict[str, DataSummary] = field(default_factory=dict)   # merchant -> its data's aggregates
    oracle: dict[str, tuple[Metrics, dict[str, int]]] = field(default_factory=dict)  # merchant -> (metrics, counts)
    refused: set[int] = field(default_factory=set)                    # nodes whose setup failed

    def newcomers(self, connected: Iterable[int]) -> list[int]:
        """Connected nodes not queried since they connected. A node that left is forgotten first, so one
        that comes back (with SuperNode auth it keeps its id) is asked again: its file may have changed."""
        connected = set(connected)
        for node in [n for n in self.merchant_of_node if n not in connected]:
            del self.merchant_of_node[node]
        self.refused &= connected
        return sorted(n for n in connected if n not in self.merchant_of_node and n not in self.refused)

    def admit(self, joined: Iterable[tuple[int, DataSummary]]) -> None:
        """Set-up nodes join in merchant order, so the first federation's indices follow merchant ids.
        A merchant that answers from a new node replaces its old one (a restarted SuperNode)."""
        for node, summary in sorted(joined, key=lambda pair: pair[1].merchant_id):
            merchant = summary.merchant_id
            for old in [n for n, m in self.merchant_of_node.items() if m == merchant]:
                del self.merchant_of_node[old]
            self.merchant_of_node[node] = merchant
            self.index_of_merchant.setdefault(merchant, len(self.index_of_merchant))
            self.summaries[merchant] = summary

    def refuse(self, node: int) -> None:
        self.refused.add(node)

    def participants(self, connected: Iterable[int]) -> dict[int, int]:
        """Connected set-up nodes -> their merchant's index, in node order."""
        return {n: self.index_of_merchant[self.merchant_of_node[n]] for n in sorted(connected)
                if n in self.merchant_of_node}

    def merchant(self, node: int) -> str | None:
        return self.merchant_of_node.get(node)
