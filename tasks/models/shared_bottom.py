"""Shared-bottom: shared embeddings and one shared MLP, then one tower per task (Caruana, 1997)."""

from __future__ import annotations

from typing import Sequence

import torch

from tasks.models.base import MultiTaskModel, PerTask, mlp, tower


class SharedBottom(MultiTaskModel):
    def __init__(self, buckets: Sequence[int], tasks: Sequence[str], embedding_dim: int = 16,
                 expert_dims: Sequence[int] = (128, 64), tower_dims: Sequence[int] = (32,),
                 dropout: float = 0.0, first_order: bool = True, embedding_init_std: float = 0.0,
                 interactions: bool = True, id_dropout: float | Sequence[float] = 0.0) -> None:
        super().__init__(buckets, tasks, embedding_dim, expert_dims, tower_dims, dropout, first_order,
                         embedding_init_std, interactions, id_dropout)
        self.bottom = mlp(self.embedding.output_dim, expert_dims, dropout)
        bottom_dim = expert_dims[-1] if expert_dims else self.embedding.output_dim
        self.towers = PerTask({t: tower(bottom_dim, tower_dims, dropout) for t in self.task_names})

    def deep(self, embedded: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.bottom(embedded)
        return {t: head(shared).squeeze(-1) for t, head in self.towers.items()}
