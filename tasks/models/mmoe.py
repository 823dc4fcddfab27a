"""MMoE: shared experts mixed by one softmax gate per task (Ma et al., KDD 2018).

Per-task gates let tasks that conflict draw on different experts instead of fighting over one shared
bottom. The expert and gating helpers here are also PLE's, so both mix experts the same way.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from core.errors import InputError
from tasks.models.base import MultiTaskModel, PerTask, mlp, tower


def expert_width(in_dim: int, expert_dims: Sequence[int]) -> int:
    """Output width of `mlp(in_dim, expert_dims)` (an empty `expert_dims` passes the input through)."""
    return expert_dims[-1] if expert_dims else in_dim


def expert_pool(n: int, in_dim: int, expert_dims: Sequence[int], dropout: float) -> nn.ModuleList:
    """`n` experts shaped like SharedBottom's bottom, so the same `expert_dims` compares like with like."""
    return nn.ModuleList(mlp(in_dim, expert_dims, dropout) for _ in range(n))


def gate_mix(gate_logits: torch.Tensor, expert_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Softmax-weighted sum of expert outputs: logits [B, E] and E outputs [B, D] -> [B, D]."""
    weights = torch.softmax(gate_logits, dim=-1)
    return torch.einsum("be,bed->bd", weights, torch.stack(list(expert_outputs), dim=1))


def check_count(model: str, key: str, value: int, minimum: int) -> None:
    if int(value) < minimum:
        raise InputError(f"model={model}: {key} must be >= {minimum}, got {value}")


class MMoE(MultiTaskModel):
    def __init__(self, buckets: Sequence[int], tasks: Sequence[str], embedding_dim: int = 16,
                 expert_dims: Sequence[int] = (128, 64), tower_dims: Sequence[int] = (32,),
                 dropout: float = 0.0, first_order: bool = True, embedding_init_std: float = 0.0,
                 interactions: bool = True, id_dropout: float | Sequence[float] = 0.0,
                 num_experts: int = 4) -> None:
        super().__init__(buckets, tasks, embedding_dim, expert_dims, tower_dims, dropout, first_order,
                         embedding_init_std, interactions, id_dropout)
        check_count("mmoe", "num_experts", num_experts, 1)
        in_dim = self.embedding.output_dim
        self.experts = expert_pool(num_experts, in_dim, expert_dims, dropout)
        self.gates = PerTask({t: nn.Linear(in_dim, num_experts) for t in self.task_names})
        self.towers = PerTask({t: tower(expert_width(in_dim, expert_dims), tower_dims, dropout)
                               for t in self.task_names})

    def deep(self, embedded: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = [expert(embedded) for expert in self.experts]
        return {t: self.towers[t](gate_mix(self.gates[t](embedded), outputs)).squeeze(-1) for t in self.task_names}
