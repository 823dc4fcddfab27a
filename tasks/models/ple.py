"""PLE: stacked customized gate control (CGC) levels of task-specific and shared experts
(Tang et al., RecSys 2020).

Task-specific experts give each task capacity no other task can pull on, which curbs the seesaw
effect of fully shared experts. Expert widths: level 0 experts are `mlp(embedding, expert_dims)`,
like every other architecture's; later levels refine with one layer `mlp(w, [w])`, w = expert_dims[-1].

Federated deviation from the paper: a non-final level's shared gate mixes the task experts'
outputs with their gradient stopped. Otherwise one task's loss would train another task's experts,
and the server averages a task's parameters only over clients holding that task's labels (see
`parameter_tasks`), so those updates would be silently dropped on clients without the labels. The
forward pass is the paper's; only that cross-task gradient path is cut.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from tasks.models.base import MultiTaskModel, PerTask, tower
from tasks.models.mmoe import check_count, expert_pool, expert_width, gate_mix


class ExtractionLevel(nn.Module):
    """One CGC level; `shared_gate` (non-final levels only) builds the next level's shared input."""

    def __init__(self, tasks: Sequence[str], in_dim: int, expert_dims: Sequence[int], num_shared_experts: int,
                 num_task_experts: int, with_shared_gate: bool, dropout: float) -> None:
        super().__init__()
        self.shared_experts = expert_pool(num_shared_experts, in_dim, expert_dims, dropout)
        self.task_experts = PerTask({t: expert_pool(num_task_experts, in_dim, expert_dims, dropout) for t in tasks})
        self.gates = PerTask({t: nn.Linear(in_dim, num_task_experts + num_shared_experts) for t in tasks})
        n_all = num_shared_experts + num_task_experts * len(tasks)
        self.shared_gate = nn.Linear(in_dim, n_all) if with_shared_gate else None

    def forward(self, task_inputs: dict[str, torch.Tensor], shared_input: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        shared = [expert(shared_input) for expert in self.shared_experts]
        own = {t: [expert(task_inputs[t]) for expert in experts] for t, experts in self.task_experts.items()}
        task_out = {t: gate_mix(self.gates[t](task_inputs[t]), own[t] + shared) for t in self.gates}
        if self.shared_gate is None:
            return task_out, None
        task_side = [out.detach() for outs in own.values() for out in outs]
        return task_out, gate_mix(self.shared_gate(shared_input), task_side + shared)


class PLE(MultiTaskModel):
    def __init__(self, buckets: Sequence[int], tasks: Sequence[str], embedding_dim: int = 16,
                 expert_dims: Sequence[int] = (128, 64), tower_dims: Sequence[int] = (32,),
                 dropout: float = 0.0, first_order: bool = True, embedding_init_std: float = 0.0,
                 interactions: bool = True, id_dropout: float | Sequence[float] = 0.0,
                 num_levels: int = 2, num_shared_experts: int = 2,
                 num_task_experts: int = 1) -> None:
        super().__init__(buckets, tasks, embedding_dim, expert_dims, tower_dims, dropout, first_order,
                         embedding_init_std, interactions, id_dropout)
        check_count("ple", "num_levels", num_levels, 1)
        check_count("ple", "num_shared_experts", num_shared_experts, 0)
        check_count("ple", "num_task_experts", num_task_experts, 0)
        check_count("ple", "num_shared_experts + num_task_experts", num_shared_experts + num_task_experts, 1)
        in_dim = self.embedding.output_dim
        width = expert_width(in_dim, expert_dims)
        self.levels = nn.ModuleList(
            ExtractionLevel(self.task_names, in_dim if level == 0 else width,
                            expert_dims if level == 0 else [width], num_shared_experts, num_task_experts,
                            with_shared_gate=level < num_levels - 1, dropout=dropout)
            for level in range(num_levels))
        self.towers = PerTask({t: tower(width, tower_dims, dropout) for t in self.task_names})

    def deep(self, embedded: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = embedded
        task_inputs = {t: shared for t in self.task_names}
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared)
        return {t: self.towers[t](task_inputs[t]).squeeze(-1) for t in self.task_names}
