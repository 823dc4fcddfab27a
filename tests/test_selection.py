"""The round a run keeps: the lowest validation loss, read from each head's own metrics."""

import math

import pytest

from tasks.registry import TASKS, resolve_tasks
from core.config import compose_config, to_plain
from core.errors import InputError
from tasks.metrics import COUNT
from tasks.selection import RoundKeeper, behind_prior, judged_labels, prior_note, resolve_rule, selection_loss


def test_a_round_is_scored_by_each_heads_training_loss_relative_to_its_prior():
    tasks = resolve_tasks(["rating", "click"], ["rating", "click"], label_stats={"rating": {"mean": 3.0, "std": 2.0}})
    prior = {"rating": {"rmse": 2.0, "mae": 1.6}, "click": {"auc": 0.5, "logloss": 0.5}}
    trained = {"rating": {"rmse": 1.0, "mae": 0.8}, "click": {"auc": 0.7, "logloss": 0.4}}
    # rating trains on standardised MSE: (1.0 / 2.0) ** 2 = 0.25 against the prior's 1.0; click on BCE = logloss.
    assert selection_loss([prior, trained], tasks) == pytest.approx((0.25 / 1.0 + 0.4 / 0.5) / 2)
    assert selection_loss([prior, {"click": trained["click"]}], tasks) == pytest.approx(0.8)
    assert selection_loss([prior], tasks) == pytest.approx(1.0)
    assert math.isnan(selection_loss([{}, trained], tasks))


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


REVIEW_LIKE = [  # validation metrics by round of the review-like table's shape (README), with label counts
    {"rating": {"rmse": 1.00, COUNT: 5000}, "purchase": {"logloss": 0.120, COUNT: 5000},
     "click": {"logloss": 0.360, COUNT: 5000}},
    {"rating": {"rmse": 1.06, COUNT: 5000}, "purchase": {"logloss": 0.119, COUNT: 5000},
     "click": {"logloss": 0.359, COUNT: 5000}},
    {"rating": {"rmse": 1.08, COUNT: 5000}, "purchase": {"logloss": 0.117, COUNT: 5000},
     "click": {"logloss": 0.361, COUNT: 5000}},
]
STATS = {"rating": {"mean": 4.0, "std": 1.0}, "purchase": {"mean": 0.03, "std": 0.17}, "click": {"mean": 0.2, "std": 0.4}}
ALL = resolve_tasks(None, list(STATS), label_stats=STATS)


def test_a_head_that_never_beats_its_prior_cannot_veto_the_rounds_the_others_learned_in():
    """One head's validation loss never beat its prior while the others learned. Counted at its own loss
    it kept the untrained round 0 for every head (the mean of the relative losses is above 1 in every
    round); counted at its prior, which it will predict, round 2 wins."""
    uncapped = [sum(t.loss_from_metrics(m[t.name]) / t.loss_from_metrics(REVIEW_LIKE[0][t.name]) for t in ALL) / 3
                for m in REVIEW_LIKE]
    assert min(uncapped) == uncapped[0]
    losses = [selection_loss(REVIEW_LIKE[:r + 1], ALL) for r in range(3)]
    assert losses[0] == pytest.approx(1.0) and losses[2] < losses[1] < 1.0
    assert losses[2] == pytest.approx((1.0 + 0.117 / 0.120 + 0.361 / 0.360) / 3)  # click learned at round 1: in full
    behind = behind_prior(dict(enumerate(REVIEW_LIKE)), 2, "best_val", ALL)
    assert set(behind) == {"rating", "click"} and behind["rating"] == pytest.approx(1.08 ** 2)
    note = prior_note(behind, 2)
    assert note.startswith("at the kept round 2 on validation, rating (16.6 % above its prior's loss), click (0.3 % "
                           "above its prior's loss): those heads predict their priors") and "\n" not in note


def test_a_head_falls_back_only_on_enough_validation_labels():
    """Purchase behind its prior at round 1: 5000 labels at a 3 % base rate hold 150 purchases, enough to
    judge; 1000 hold 30, noise (the review-like table's purchase head did well on test)."""
    purchase = [t for t in ALL if t.name == "purchase"]
    assert judged_labels(purchase[0], REVIEW_LIKE[1]["purchase"]) == pytest.approx(150)
    scarce = [{t: {**m, COUNT: 1000} for t, m in v.items()} for v in REVIEW_LIKE]
    assert set(behind_prior(dict(enumerate(REVIEW_LIKE)), 1, "best_val", ALL)) == {"rating"}
    assert behind_prior(dict(enumerate(scarce)), 1, "best_val", purchase) == {}
    assert set(behind_prior(dict(enumerate(scarce)), 1, "best_val", ALL)) == {"rating"}  # 1000 ratings are enough


def test_no_head_falls_back_under_last_or_at_round_0():
    validations = dict(enumerate(REVIEW_LIKE))
    assert behind_prior(validations, 2, "last", ALL) == {}
    assert behind_prior(validations, 0, "best_val", ALL) == {}
    assert behind_prior(validations, 1, "best_val", [t for t in ALL if t.name == "click"]) == {}
