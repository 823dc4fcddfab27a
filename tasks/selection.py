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
from tasks.metrics import COUNT, Metrics
from tasks.registry import Task

RULES = ("auto", "best_val", "last")
RESOLVED_RULES = ("best_val", "last")  # what `auto` becomes once the validation rows are known
State = TypeVar("State")


def relative_loss(task: Task, metrics: Mapping[str, Metrics], reference: Mapping[str, Metrics]) -> float:
    """The task's validation loss (the loss its head trains on, read from its metrics) over its
    reference's (the untrained model's: its prior); NaN where either is missing.

    Relative, so every task counts by how much it improved on its prior: a rating's squared error
    (about 1 in standard units) would otherwise outweigh a 3 % purchase rate's log-loss (about 0.1)
    and choose the round for every head."""
    base = task.loss_from_metrics(reference.get(task.name, {}))
    value = task.loss_from_metrics(metrics.get(task.name, {}))
    return value / base if math.isfinite(base) and base > 0 else math.nan


def selection_loss(validations: Sequence[Mapping[str, Metrics]], tasks: Sequence[Task]) -> float:
    """The loss best_val keeps a round by: `validations` holds the validation metrics from round 0 (the
    untrained model, every head at its prior) to the round being scored, and the loss is the mean over
    tasks of each one's loss relative to its prior (`relative_loss`), except that a task which has
    not beaten its prior at any round yet counts as its prior (1).

    Such a head falls back to its prior in the kept model (`behind_prior`), so that is what it will
    predict; counted at its own loss it could veto every trained round for the heads that did learn
    (a purchase head with a few dozen validation positives kept a review-like table at round 0,
    README). A head that learned and then overfits counts in full, so its overfitting still weighs
    against later rounds. NaN where no task has validation labels.
    """
    reference, current = validations[0], validations[-1]
    values = []
    for task in tasks:
        ratio = relative_loss(task, current, reference)
        if not math.isfinite(ratio):
            continue
        learned = any(relative_loss(task, metrics, reference) < 1 for metrics in validations[1:])
        values.append(ratio if learned else min(ratio, 1.0))
    return sum(values) / len(values) if values else math.nan


# A head falls back to its prior only where validation holds at least this many labels of its rarer
# class (a rating: rows). Below that a log-loss ratio is noise: on a review-like table (README) with about
# 25 validation purchases, the purchase head measured 2.5 % above its prior there (AUC 0.45) and 0.637
# AUC on test, 2.8 % below its prior's log-loss.
MIN_LABELS_TO_FALL_BACK = 100


def judged_labels(task: Task, metrics: Mapping[str, float]) -> float:
    """How many labels a task's validation verdict rests on: its rarer class's expected count for a
    binary task (labels x the train base rate, or its complement), its labels for a rating."""
    n = float(metrics.get(COUNT, 0))
    rate = task.base_rate if task.kind == "binary" and task.base_rate is not None else None
    return n * min(rate, 1.0 - rate) if rate is not None else n


def behind_prior(validations: Mapping[int, Mapping[str, Metrics]], kept_round: int, rule: str,
                 tasks: Sequence[Task]) -> dict[str, float]:
    """Task -> its validation loss over its prior's at the kept round, for each task that did not beat
    its prior there on enough labels (MIN_LABELS_TO_FALL_BACK): the heads the kept model replaces by
    their prior (a train mean or base rate), so a head is not kept that validation says is worse than
    predicting the prior. Only under best_val (`last` asks for the last round as it is) and only past
    round 0 (which is every prior already). `validations`: round -> validation metrics with label
    counts (tasks/metrics.py combine_counted), round 0 included."""
    if rule != "best_val" or kept_round <= 0 or 0 not in validations or kept_round not in validations:
        return {}
    kept, behind = validations[kept_round], {}
    for task in tasks:
        ratio = relative_loss(task, kept, validations[0])
        if math.isfinite(ratio) and ratio >= 1.0 and judged_labels(task, kept.get(task.name, {})) >= MIN_LABELS_TO_FALL_BACK:
            behind[task.name] = ratio
    return behind


def prior_note(behind: Mapping[str, float], kept_round: int) -> str:
    """For the log: which heads the kept model replaced by their prior, and why."""
    heads = ", ".join(f"{name} ({100 * (ratio - 1):.1f} % above its prior's loss)" for name, ratio in behind.items())
    return (f"at the kept round {kept_round} on validation, {heads}: "
            f"{'that head predicts its prior' if len(behind) == 1 else 'those heads predict their priors'} "
            f"(the train mean or base rate) in the kept model; the other heads are as trained")


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
