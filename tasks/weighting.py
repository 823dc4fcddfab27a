"""Loss weighting: how per-task losses become one update, independent of the architecture.

A weighting owns the backward pass (`backward(losses, shared_parameters)`) so that methods that
work on gradients rather than on loss sums fit the same slot. Learned weighting state lives in the
module's own parameters and buffers.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from core.errors import InputError


def weighted_sum(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    return sum(weights[t] * loss for t, loss in losses.items())  # type: ignore[return-value]


class LossWeighting(nn.Module):
    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.task_names = list(tasks)

    def weights(self) -> dict[str, float]:
        raise NotImplementedError

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[nn.Parameter]) -> None:
        """Accumulate gradients for this batch's task losses (only tasks with labels in the batch)."""
        weighted_sum(losses, self.weights()).backward()


class Equal(LossWeighting):
    def weights(self) -> dict[str, float]:
        return {t: 1.0 for t in self.task_names}


class Static(LossWeighting):
    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        given = dict(weights or {})
        for task, value in given.items():
            if float(value) < 0:
                raise InputError(f"loss.weights.{task} must be >= 0, got {value}")
        self._weights = {t: float(given.get(t, 1.0)) for t in self.task_names}

    def weights(self) -> dict[str, float]:
        return dict(self._weights)


WEIGHTINGS: dict[str, type[LossWeighting]] = {"equal": Equal, "static": Static}


def build_weighting(loss_cfg: Mapping[str, Any], tasks: Sequence[str]) -> LossWeighting:
    options = dict(loss_cfg)
    name = options.pop("name")
    if name not in WEIGHTINGS:
        raise InputError(f"unknown loss weighting {name!r} (known: {', '.join(WEIGHTINGS)})")
    try:
        return WEIGHTINGS[name](tasks, **options)
    except TypeError as exc:
        raise InputError(f"loss={name}: {exc}") from exc
