"""Which round a run keeps and reports: the one with the lowest validation loss, or simply the last.

Centralized training on pooled data peaks early and then overfits while federated averaging is
still improving, so comparing the modes at one fixed round mostly measures where each one stands on
its own curve. Keeping each run's best round by validation, the same rule in every mode, compares
what each could deliver; the test split is never used to choose.
"""

from __future__ import annotations

import math
from typing import Callable, Generic, Mapping, Sequence, TypeVar

from core.errors import InputError
from tasks.metrics import Metrics
from tasks.registry import Task

RULES = ("best_val", "last")
State = TypeVar("State")


def validation_loss(metrics: Mapping[str, Metrics], tasks: Sequence[Task]) -> float:
    """Mean over tasks of the loss each head trains on, read from its validation metrics; NaN if none."""
    values = [task.loss_from_metrics(metrics[task.name]) for task in tasks if task.name in metrics]
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise InputError(f"unknown select_round {rule!r} (known: {', '.join(RULES)})")


def check_selectable(rule: str, validation_rows: int) -> None:
    """A run can keep its round by this rule: the rule exists, and best_val has rows to look at."""
    check_rule(rule)
    if rule == "best_val" and validation_rows <= 0:
        raise InputError("select_round=best_val needs validation rows: set data.val_fraction > 0, "
                         "or select_round=last")


class RoundKeeper(Generic[State]):
    """Offered every evaluated round in order; keeps the state of the round the rule picks.

    A round without validation labels (NaN loss) cannot be compared, so it is kept only as the latest.
    Under `last` the snapshot is taken only when `state` is read, after training, so the default rule
    copies no model per round (the caller must not change the live state after its final offer).
    """

    def __init__(self, rule: str) -> None:
        if rule not in RULES:
            raise ValueError(f"select_round must be one of {', '.join(RULES)}, got {rule!r}")
        self.rule = rule
        self.round = -1
        self.loss = math.nan
        self._snapshot: Callable[[], State] | None = None
        self._state: State | None = None

    def offer(self, server_round: int, loss: float, snapshot: Callable[[], State]) -> None:
        if self.rule == "last":
            self.round, self.loss, self._snapshot = server_round, loss, snapshot
        elif not math.isfinite(self.loss) or (math.isfinite(loss) and loss < self.loss):
            self.round, self.loss, self._state = server_round, loss, snapshot()

    @property
    def state(self) -> State | None:
        return self._snapshot() if self._snapshot is not None else self._state
