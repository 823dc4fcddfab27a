"""Which round a run keeps and reports: the one with the lowest validation loss, or simply the last.

Centralized training on pooled data peaks early and then overfits while federated averaging is
still improving, so comparing the modes at one fixed round mostly measures where each one stands on
its own curve. Keeping each run's best round by validation, the same rule in every mode, compares
what each could deliver; the test split is never used to choose.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Generic, Mapping, Sequence, TypeVar

from core.errors import InputError
from tasks.metrics import Metrics
from tasks.registry import Task

RULES = ("auto", "best_val", "last")
RESOLVED_RULES = ("best_val", "last")  # what `auto` becomes once the validation rows are known
State = TypeVar("State")


def validation_loss(metrics: Mapping[str, Metrics], tasks: Sequence[Task],
                    reference: Mapping[str, Metrics] | None = None) -> float:
    """Mean over tasks of the loss each head trains on, read from its validation metrics; NaN if none.

    With `reference` (the untrained model's validation metrics, which predict each task's prior)
    each task's loss is taken relative to its reference loss first, so every task counts by how much
    it improved on its prior: a rating's squared error (about 1 in standard units) would otherwise
    outweigh a 3 % purchase rate's log-loss (about 0.1) and choose the round for every head.
    """
    values = []
    for task in tasks:
        if task.name not in metrics:
            continue
        values.append(task.loss_from_metrics(metrics[task.name]) if reference is None
                      else relative_loss(task, metrics, reference))
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def relative_loss(task: Task, metrics: Mapping[str, Metrics], reference: Mapping[str, Metrics]) -> float:
    """The task's validation loss over its reference's (the untrained model's: its prior); NaN where
    either is missing."""
    base = task.loss_from_metrics(reference.get(task.name, {}))
    value = task.loss_from_metrics(metrics.get(task.name, {}))
    return value / base if math.isfinite(base) and base > 0 else math.nan


def untrained_round_note(validation: Sequence[tuple[int, Mapping[str, Metrics]]], tasks: Sequence[Task]
                         ) -> str | None:
    """Why best_val kept round 0 (the untrained model, every head at its prior) although some head
    learned: one round is kept for every head, so a head that never beat its prior on validation can
    outweigh the others' gains (measured on a small review-like table, README). None when no head
    learned, or every head did. `validation`: (round, validation metrics) from round 0 on."""
    if len(validation) < 2:
        return None
    reference = validation[0][1]
    learned, never = [], []
    for task in tasks:
        ratios = [(relative_loss(task, metrics, reference), r) for r, metrics in validation[1:]]
        ratio, best = min(((q, r) for q, r in ratios if math.isfinite(q)), default=(math.nan, -1))
        if ratio < 1:
            learned.append(f"{task.name} (round {best}, {100 * (1 - ratio):.1f} % below its prior's loss)")
        elif math.isfinite(ratio):  # a task without validation labels says nothing either way
            never.append(task.name)
    if not learned or not never:
        return None
    return (f"kept round 0, the untrained model: on validation {', '.join(never)} never beat "
            f"{'its prior' if len(never) == 1 else 'their priors'}, and that "
            f"outweighed what {', '.join(learned)} learned (one round is kept for every head); to keep the "
            f"trained heads, leave {', '.join(never)} out (tasks=[{','.join(t.name for t in tasks if t.name not in never)}])"
            f" or set select_round=last")


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise InputError(f"unknown select_round {rule!r} (known: {', '.join(RULES)})")


def resolve_rule(rule: str, validation_rows: int) -> str:
    """The rule a run keeps its round by: `auto` is best_val where there is a validation split, else
    last; best_val without validation rows is a user error."""
    check_rule(rule)
    if rule == "best_val" and validation_rows <= 0:
        raise InputError("select_round=best_val needs validation rows: set data.val_fraction > 0, "
                         "or select_round=last")
    if rule == "auto":
        return "best_val" if validation_rows > 0 else "last"
    return rule


class RoundKeeper(Generic[State]):
    """Offered every evaluated round in order; keeps the state of the round the rule picks.

    A round without validation labels (NaN loss) cannot be compared, so it is kept only as the latest.
    Under `last` the snapshot is taken only when `state` is read, after training, so the default rule
    copies no model per round (the caller must not change the live state after its final offer).
    With `patience` > 0 under best_val, `stop` turns true once that many rounds have passed without a
    better validation loss: sparse tables overfit within a few passes, and rounds after that only cost.
    """

    def __init__(self, rule: str, patience: int = 0) -> None:
        if rule not in RESOLVED_RULES:
            raise ValueError(f"RoundKeeper needs a resolved rule ({', '.join(RESOLVED_RULES)}), got {rule!r}")
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.rule = rule
        self.patience = patience
        self.round = -1
        self.latest = -1
        self.loss = math.nan
        self._snapshot: Callable[[], State] | None = None
        self._state: State | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "RoundKeeper[State]":
        """The keeper of a run whose `select_round` has been resolved (run_job does that)."""
        return cls(str(cfg["select_round"]), int(cfg.get("patience", 0)))

    @property
    def stop(self) -> bool:
        return self.rule == "best_val" and self.patience > 0 and self.round >= 0 \
            and self.latest - self.round >= self.patience

    def offer(self, server_round: int, loss: float, snapshot: Callable[[], State]) -> None:
        self.latest = server_round
        if self.rule == "last":
            self.round, self.loss, self._snapshot = server_round, loss, snapshot
        elif not math.isfinite(self.loss) or (math.isfinite(loss) and loss < self.loss):
            self.round, self.loss, self._state = server_round, loss, snapshot()

    @property
    def state(self) -> State | None:
        return self._snapshot() if self._snapshot is not None else self._state

    def progress(self) -> dict[str, float]:
        """What a checkpoint needs besides `best_state` to resume the rule exactly where it stood."""
        return {"round": self.round, "latest": self.latest, "loss": self.loss}

    @property
    def best_state(self) -> State | None:
        """The kept round's snapshot under best_val (None under last, which snapshots only when read)."""
        return self._state

    def restore(self, progress: Mapping[str, float], best_state: State | None, snapshot: Callable[[], State]
                ) -> None:
        """Back to a checkpoint's `progress()`; under `last`, `snapshot` reads the live state as `offer` would."""
        self.round, self.latest, self.loss = int(progress["round"]), int(progress["latest"]), float(progress["loss"])
        if self.rule == "last":
            self._snapshot = snapshot
        else:
            self._state = best_state
