"""The state that travels between server and clients: the model's and the loss weighting's together.

Learned weighting state (uncertainty log-variances, GradNorm weights, DWA loss history) is federated
like the model: per-task entries are averaged over the clients that hold that task's labels.
"""

from __future__ import annotations

from typing import Mapping

import torch

from tasks.models import MultiTaskModel, parameter_tasks
from tasks.weighting import LossWeighting

WEIGHTING_PREFIX = "loss_weighting."


def joint_state(model: MultiTaskModel, weighting: LossWeighting) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state.update({WEIGHTING_PREFIX + k: v.detach().cpu() for k, v in weighting.state_dict().items()})
    return state


def joint_parameters(model: MultiTaskModel, weighting: LossWeighting) -> dict[str, torch.nn.Parameter]:
    """The model's and the weighting's parameters by their joint_state names."""
    named = dict(model.named_parameters())
    named.update({WEIGHTING_PREFIX + k: v for k, v in weighting.named_parameters()})
    return named


def snapshot_state(model: MultiTaskModel, weighting: LossWeighting) -> dict[str, torch.Tensor]:
    """A copy of the joint state that later training does not change (joint_state shares CPU storage)."""
    return {k: v.clone() for k, v in joint_state(model, weighting).items()}


def load_joint_state(model: MultiTaskModel, weighting: LossWeighting, state: Mapping[str, torch.Tensor]) -> None:
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(WEIGHTING_PREFIX)})
    weighting.load_state_dict({k[len(WEIGHTING_PREFIX):]: v for k, v in state.items()
                               if k.startswith(WEIGHTING_PREFIX)})


def joint_owners(model: MultiTaskModel, weighting: LossWeighting) -> dict[str, str | None]:
    owners = parameter_tasks(model)
    owners.update({WEIGHTING_PREFIX + k: v for k, v in parameter_tasks(weighting).items()})
    return owners
