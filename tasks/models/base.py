"""Building blocks every architecture shares, and the rule that tells task parameters from shared ones.

A parameter belongs to task `t` when it sits under a `PerTask` container's key `t`; every other
parameter is shared. The server's multi-task FedAvg reads that rule through `parameter_tasks`, so a
new architecture only has to keep its task-specific modules in `PerTask` containers.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class PerTask(nn.ModuleDict):
    """One module per task; the parameters below key `t` are averaged over clients holding `t` labels."""


class PerTaskParameters(nn.ParameterDict):
    """One parameter per task (e.g. a learned loss weight), owned by that task like a `PerTask` module."""


def mlp(in_dim: int, dims: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in dims:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


class FeatureEmbedding(nn.Module):
    """One hashed embedding table per categorical feature; output = the embeddings concatenated with
    their pairwise dot products (DLRM-style), since an MLP alone learns user x item affinity poorly."""

    def __init__(self, buckets: Sequence[int], dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n in buckets)
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.05)
        n = len(buckets)
        self.pairs = torch.triu_indices(n, n, offset=1)
        self.output_dim = dim * n + self.pairs.shape[1]

    def l2_penalty(self, features: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of the squared norms of the rows it looks up: only those rows get a
        gradient, so regularising keeps every other row untouched (and so out of row-wise averaging)."""
        return sum(table(features[:, j]).pow(2).sum(1).mean() for j, table in enumerate(self.tables))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        vectors = torch.stack([table(features[:, j]) for j, table in enumerate(self.tables)], dim=1)
        dots = torch.einsum("bid,bjd->bij", vectors, vectors)[:, self.pairs[0], self.pairs[1]]
        return torch.cat([vectors.flatten(1), dots], dim=1)


class MultiTaskModel(nn.Module):
    """Base of every architecture: the same constructor arguments, so comparisons are fair.

    forward(features [B, n_features] int64) -> {task: head output [B]} (a logit or a value).
    """

    def __init__(self, buckets: Sequence[int], tasks: Sequence[str], embedding_dim: int = 16,
                 expert_dims: Sequence[int] = (128, 64), tower_dims: Sequence[int] = (32,),
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.task_names = list(tasks)
        self.embedding = FeatureEmbedding(buckets, embedding_dim)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss reaches (what gradient-surgery weightings operate on)."""
        owners = parameter_tasks(self)
        return [p for name, p in self.named_parameters() if owners[name] is None]


def tower(in_dim: int, tower_dims: Sequence[int], dropout: float) -> nn.Sequential:
    """A task tower ending in one output unit."""
    body = mlp(in_dim, tower_dims, dropout)
    out_dim = tower_dims[-1] if tower_dims else in_dim
    return nn.Sequential(*body, nn.Linear(out_dim, 1))


def parameter_tasks(model: nn.Module) -> dict[str, str | None]:
    """Parameter name -> owning task, or None for shared parameters (state_dict names)."""
    owners: dict[str, str | None] = {name: None for name, _ in model.named_parameters()}
    owners.update({name: None for name, _ in model.named_buffers()})
    for prefix, module in model.named_modules():
        if isinstance(module, PerTaskParameters):
            for task in module.keys():
                owners[f"{prefix}.{task}" if prefix else task] = task
        if isinstance(module, PerTask):
            for task, child in module.items():
                base = f"{prefix}.{task}." if prefix else f"{task}."
                for name, _ in list(child.named_parameters()) + list(child.named_buffers()):
                    owners[base + name] = task
    return owners
