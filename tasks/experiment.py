"""One run's resolved setup (shards, tasks, builders), the same on the server and on every client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from core.runtime import resolve_device
from data.shards import Shard, ShardIndex, cache_dir, load_shard, prepare_shards, read_index
from tasks.models import MultiTaskModel, build_model
from tasks.registry import Task, resolve_tasks
from tasks.weighting import LossWeighting, build_weighting


@dataclass
class Experiment:
    cfg: Mapping[str, Any]
    index: ShardIndex
    tasks: list[Task]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def metric_names(self) -> dict[str, tuple[str, ...]]:
        return {t.name: t.metric_names for t in self.tasks}

    @property
    def device(self) -> torch.device:
        return resolve_device(str(self.cfg["device"]))

    def new_model(self) -> MultiTaskModel:
        """The initial model; seeded, so every mode starts from the same weights."""
        torch.manual_seed(int(self.cfg["seed"]))
        model = build_model(self.cfg["model"], self.index.buckets, self.task_names)
        model.init_priors({t.name: t.base_rate for t in self.tasks if t.base_rate is not None})
        return model

    def new_weighting(self) -> LossWeighting:
        return build_weighting(self.cfg["loss"], self.task_names)

    def shard(self, merchant_id: str, split: str) -> Shard:
        return load_shard(self.index, merchant_id, split)


def open_experiment(cfg: Mapping[str, Any], prepare: bool = False) -> Experiment:
    """prepare=True (server side) builds the shard cache; clients only read it.

    A merchant without labels for any task of the run still takes part: it trains nothing and its
    update carries zero weight.
    """
    index = prepare_shards(cfg["data"]) if prepare else read_index(cache_dir(cfg["data"]))
    requested = cfg.get("tasks")
    tasks = resolve_tasks(list(requested) if requested is not None else None, index.label_columns,
                          label_stats=index.label_stats)
    return Experiment(cfg=cfg, index=index, tasks=tasks)
