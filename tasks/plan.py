"""The run plan: which tasks the model has and the label statistics its heads use, fixed once by the
server from the nodes' summaries and sent to every node, so that every node builds the identical model.

The combination is plain functions over summaries, tested directly; the ServerApp only carries them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from data.summary import (DataSummary, available_labels, pooled_cold_shares, pooled_feature_stats,
                          pooled_label_stats)
from tasks.registry import resolve_tasks


@dataclass(frozen=True)
class RunPlan:
    tasks: list[str]                            # task names, registry order
    label_stats: dict[str, dict[str, float]]    # label column -> {"mean", "std", "count"} over train rows
    # numerical feature column -> {"mean", "std", "count"} over train rows: how every node standardises it
    feature_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    # hashed column -> share of validation rows whose value their merchant never trained on
    cold_shares: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"tasks": self.tasks, "label_stats": self.label_stats,
                           "feature_stats": self.feature_stats, "cold_shares": self.cold_shares}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "RunPlan":
        raw = json.loads(text)
        return RunPlan(list(raw["tasks"]), {k: dict(v) for k, v in raw["label_stats"].items()},
                       {k: dict(v) for k, v in raw.get("feature_stats", {}).items()},
                       {k: float(v) for k, v in raw.get("cold_shares", {}).items()})


def plan_from_summaries(requested: Sequence[str] | None, summaries: Iterable[DataSummary]) -> RunPlan:
    """Task list by the registry's rules (and error messages) over the labels the nodes have, and the
    label and numerical-feature statistics pooled over every node's train split, and how often each
    hashed column's validation value is cold."""
    summaries = list(summaries)
    stats = pooled_label_stats(summaries)
    tasks = resolve_tasks(requested, available_labels(summaries), label_stats=stats)
    return RunPlan([t.name for t in tasks], stats, pooled_feature_stats(summaries), pooled_cold_shares(summaries))
