"""The model a run scores, keeps and saves: an exponential moving average of its rounds' models.

One round's model carries that round's noise: the batch order, the merchants' drifting local steps,
a swing of the rare-label heads (`synthetic_coldstart`'s purchase AUC moved by up to 0.015 from one
federated round to the next). Averaging the rounds' weights (Polyak-Ruppert averaging; the EMA
weights of deep-learning training) removes part of it without touching training: every round still
trains on from the latest model, and only what is scored, chosen by validation and saved is the
average. The same rule in every mode (README, Benchmarks).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Generic, Iterator, Mapping, TypeVar

import numpy as np
import torch

from core.errors import InputError
from tasks.models import MultiTaskModel
from tasks.state import load_joint_state, snapshot_state
from tasks.weighting import LossWeighting
from tasks.wide import first_deep_round

State = TypeVar("State", bound=Mapping[str, Any])


def _floating(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    return np.issubdtype(np.asarray(value).dtype, np.floating)


def moving_average(average: Mapping[str, Any], current: Mapping[str, Any], decay: float) -> dict[str, Any]:
    """decay * average + (1 - decay) * current, name by name (arrays or tensors); a non-float entry
    (a counter) is taken from `current`."""
    return {name: _blend(average[name], value, decay) if _floating(value) else value
            for name, value in current.items()}


def _blend(old: Any, new: Any, decay: float) -> Any:
    out = decay * old + (1 - decay) * new
    # numpy turns a 0-d array (a task's global bias) into a scalar: keep it an array of its dtype
    return out if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.asarray(new).dtype)


def check_decay(decay: float) -> float:
    if not 0.0 <= decay < 1.0:
        raise InputError(f"train.average_decay={decay}: must be in [0, 1) (0 = score each round's own model)")
    return decay


class RoundAverage(Generic[State]):
    """Offered each round's model in order; hands back the model to score for that round.

    Rounds before `first_round` (round 0's untrained model, the bias-only rounds) are scored as they
    are and not averaged: the deep part has not trained yet, and averaging it in would pull the first
    trained rounds back towards the initialisation.
    """

    def __init__(self, decay: float, first_round: int) -> None:
        self.decay = check_decay(float(decay))
        self.first_round = first_round
        self.average: State | None = None

    @classmethod
    def from_config(cls, train_cfg: Mapping[str, Any]) -> "RoundAverage[State]":
        return cls(float(train_cfg.get("average_decay", 0.0)), first_deep_round(train_cfg))

    def averages(self, server_round: int) -> bool:
        return self.decay > 0.0 and server_round >= self.first_round

    def offer(self, server_round: int, state: State) -> State:
        """The model to score for `server_round`; `state` must not change afterwards (a copy)."""
        if not self.averages(server_round):
            return state
        self.average = state if self.average is None else moving_average(self.average, state, self.decay)  # type: ignore[assignment]
        return self.average  # type: ignore[return-value]


def scored_state(model: MultiTaskModel, weighting: LossWeighting, average: RoundAverage
                 ) -> dict[str, torch.Tensor]:
    """What the latest round scored, as a copy later training leaves alone (a round keeper's snapshot)."""
    return snapshot_state(model, weighting) if average.average is None else dict(average.average)


@contextmanager
def scoring_average(model: MultiTaskModel, weighting: LossWeighting, average: RoundAverage,
                    server_round: int) -> Iterator[None]:
    """Within the block the model holds what `server_round` scores (the average, once there is one),
    after it the trained state again, so that training goes on from its latest round."""
    if not average.averages(server_round):
        yield
        return
    trained = snapshot_state(model, weighting)
    load_joint_state(model, weighting, average.offer(server_round, trained))
    try:
        yield
    finally:
        load_joint_state(model, weighting, trained)
