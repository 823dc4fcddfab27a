"""The round a run keeps: the lowest validation loss, read from each head's own metrics."""

import math

import pytest

from tasks.registry import TASKS, resolve_tasks
from core.config import compose_config, to_plain
from core.errors import InputError
from tasks.selection import RoundKeeper, resolve_rule, untrained_round_note, validation_loss


def test_validation_loss_is_the_mean_of_each_heads_training_loss():
    tasks = resolve_tasks(["rating", "click"], ["rating", "click"], label_stats={"rating": {"mean": 3.0, "std": 2.0}})
    metrics = {"rating": {"rmse": 1.0, "mae": 0.8}, "click": {"auc": 0.7, "logloss": 0.4}}
    # rating trains on standardised MSE: (1.0 / 2.0) ** 2 = 0.25; click on BCE = logloss.
    assert validation_loss(metrics, tasks) == pytest.approx((0.25 + 0.4) / 2)
    assert validation_loss({"click": metrics["click"]}, tasks) == pytest.approx(0.4)
    assert math.isnan(validation_loss({}, tasks))


def test_best_val_keeps_the_lowest_loss_and_last_keeps_the_last():
    losses = [0.9, 0.5, 0.6, math.nan, 0.55]
    best, last = RoundKeeper("best_val"), RoundKeeper("last")
    for r, loss in enumerate(losses):
        best.offer(r, loss, lambda r=r: f"state-{r}")
        last.offer(r, loss, lambda r=r: f"state-{r}")
    assert (best.round, best.state, best.loss) == (1, "state-1", 0.5)
    assert (last.round, last.state) == (4, "state-4")


def test_rounds_without_validation_keep_the_latest():
    keeper = RoundKeeper("best_val")
    for r in range(3):
        keeper.offer(r, math.nan, lambda r=r: r)
    assert keeper.round == 2


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="resolved rule"):
        RoundKeeper("best_test")
    with pytest.raises(InputError, match="unknown select_round 'best_test'"):
        resolve_rule("best_test", True)


def test_auto_keeps_the_best_round_where_there_is_a_validation_split():
    assert resolve_rule("auto", True) == "best_val" and resolve_rule("auto", False) == "last"
    assert resolve_rule("last", True) == "last"
    with pytest.raises(InputError, match="select_round=best_val needs validation rows"):
        resolve_rule("best_val", False)


def test_patience_stops_after_that_many_rounds_without_improvement():
    keeper = RoundKeeper("best_val", patience=2)
    stops = []
    for r, loss in enumerate([0.9, 0.5, 0.6, 0.55, 0.7]):
        keeper.offer(r, loss, lambda r=r: r)
        stops.append(keeper.stop)
    assert stops == [False, False, False, True, True] and keeper.state == 1


def test_patience_never_stops_without_validation_or_under_last():
    no_validation, last = RoundKeeper("best_val", patience=1), RoundKeeper("last", patience=1)
    for r in range(5):
        no_validation.offer(r, math.nan, lambda r=r: r)
        last.offer(r, 1.0 + r, lambda r=r: r)
    assert not no_validation.stop and not last.stop


def test_binary_loss_is_logloss():
    assert TASKS["purchase"].loss_from_metrics({"auc": 0.5, "logloss": 0.2}) == 0.2


@pytest.mark.parametrize("overrides, rounds", [
    ([], 10),                                               # the synthetic default holds out no rows
    (["data.val_fraction=0.1"], 20),
    (["data=synthetic_sparse"], 20),                        # the presets and tables hold out 10 %
    (["data=table", "data.path=/nowhere/t.csv"], 20),
    (["data=synthetic_coldstart", "data.val_fraction=0"], 10),
    (["data=synthetic_sparse", "federation.rounds=5"], 5),  # a number overrides the budget
])
def test_the_round_budget_follows_the_validation_split(overrides, rounds):
    """federation.rounds by default: 20 where a validation split keeps the best round and patience
    stops a run, 10 where every round is played."""
    assert to_plain(compose_config(overrides))["federation"]["rounds"] == rounds


def test_the_default_round_budget_on_a_table_is_the_benchs():
    """So a plain `merchant-fl data=table ...` runs what `make bench` reports (benchmarks/quality.py)."""
    from benchmarks.quality import PROTOCOL

    protocol = [f"{key}={value}" for key, value in PROTOCOL.items() if key != "federation.rounds"]
    assert to_plain(compose_config(protocol))["federation"]["rounds"] == int(PROTOCOL["federation.rounds"])


def test_a_head_that_never_beats_its_prior_is_named_when_round_0_is_kept():
    """The review-like table's shape (README): one head's validation loss never beat its prior while
    the others learned, and the mean over heads kept the untrained round 0."""
    tasks = [TASKS["rating"], TASKS["purchase"], TASKS["click"]]
    validation = [(0, {"rating": {"rmse": 1.00}, "purchase": {"logloss": 0.120}, "click": {"logloss": 0.360}}),
                  (1, {"rating": {"rmse": 1.06}, "purchase": {"logloss": 0.119}, "click": {"logloss": 0.359}}),
                  (2, {"rating": {"rmse": 1.08}, "purchase": {"logloss": 0.117}, "click": {"logloss": 0.361}})]
    reference = validation[0][1]
    assert all(validation_loss(m, tasks, reference) > 1.0 for _, m in validation[1:])  # round 0 is kept
    note = untrained_round_note(validation, tasks)
    assert note.startswith("kept round 0, the untrained model: on validation rating never beat its prior, and "
                           "that outweighed what purchase (round 2, 2.5 % below its prior's loss), click (round 1, "
                           "0.3 % below its prior's loss) learned")
    assert note.endswith("leave rating out (tasks=[purchase,click]) or set select_round=last") and "\n" not in note
    # No head learned, every head learned, or nothing but round 0: nothing to explain.
    assert untrained_round_note(validation, [TASKS["rating"]]) is None
    assert untrained_round_note(validation, [TASKS["purchase"]]) is None
    assert untrained_round_note(validation[:1], tasks) is None
