"""Client sampling, reply checks, min_replies and robust aggregation (server_app/replies.py, aggregation.py)."""

import numpy as np
import pytest

from core.config import compose_config, to_plain
from core.errors import InputError
from server_app.aggregation import ClientUpdate, aggregate, aggregate_multitask, robust_mean
from server_app.replies import reply_problem, required_replies, round_rules, sample_clients
from tasks.experiment import resolved_training
from tasks.registry import TASKS

GLOBAL = {"w": np.zeros((3, 2), np.float32), "steps": np.zeros(1, np.int64)}


def test_sampling_by_count_or_fraction_is_seeded_by_seed_and_round():
    merchants = list(range(10))
    draw = sample_clients(merchants, 1.0, 3, seed=0, server_round=1, phase="train")
    assert len(draw) == 3 and set(draw) <= set(merchants) and draw == sorted(draw)
    assert draw == sample_clients(merchants[::-1], 1.0, 3, 0, 1, "train")  # whatever order the nodes come in
    rounds = {tuple(sample_clients(merchants, 1.0, 3, 0, r, "train")) for r in range(1, 9)}
    assert len(rounds) > 1  # a new draw every round
    assert sample_clients(merchants, 1.0, 3, 1, 1, "train") != draw or \
        sample_clients(merchants, 1.0, 3, 2, 1, "train") != draw  # and per seed
    assert len(sample_clients(merchants, 0.25, None, 0, 1, "train")) == 2
    assert sample_clients(merchants, 0.01, None, 0, 1, "train") != []  # at least one
    assert sample_clients([4, 7], 1.0, 5, 0, 1, "train") == [4, 7]    # never more than are connected
    assert sample_clients(merchants, 1.0, None, 0, 1, "train") == merchants


def test_min_replies_is_a_count_or_a_fraction_of_the_clients_asked():
    assert required_replies(1, 10) == 1 and required_replies(3, 10) == 3
    assert required_replies(0.5, 10) == 5 and required_replies(0.5, 5) == 3 and required_replies(0.01, 5) == 1
    with pytest.raises(InputError, match="min_replies"):
        required_replies(0, 5)


def test_a_reply_must_match_the_global_model_and_be_finite():
    good = {"w": np.ones((3, 2), np.float32), "steps": np.ones(1, np.int64)}
    assert reply_problem(GLOBAL, good, {}, {}) is None
    nan = {**good, "w": np.array([[1, np.nan], [1, 1], [np.inf, 1]], np.float32)}
    assert "'w' holds 2 non-finite value(s)" in reply_problem(GLOBAL, nan, {}, {})
    assert "'w' is float32[3, 3]" in reply_problem(GLOBAL, {**good, "w": np.ones((3, 3), np.float32)}, {}, {})
    assert "float64" in reply_problem(GLOBAL, {**good, "w": np.ones((3, 2))}, {}, {})
    assert "missing ['steps']" in reply_problem(GLOBAL, {"w": good["w"]}, {}, {})
    outside = {"w": (np.array([0, 3]), np.array([1, 1]))}
    assert "outside its 3 rows" in reply_problem(GLOBAL, good, outside, {})
    stats = {"w": (np.array([0]), np.array([np.nan]), np.array([1.0]))}
    assert "not finite" in reply_problem(GLOBAL, good, {}, stats)


def test_round_rules_check_their_settings():
    assert round_rules(to_plain(compose_config([]))).min_replies == 1
    assert round_rules(to_plain(compose_config([]))).row_progress_power == 0.5  # the default: Adagrad, fresh state
    # a run without ratings keeps its optimizer state (train.keep_optimizer_state=auto, resolved at setup)
    without_ratings = to_plain(compose_config([]))
    without_ratings["train"] = resolved_training(without_ratings["train"], [TASKS["purchase"], TASKS["click"]])
    assert round_rules(without_ratings).row_progress_power == 0.0
    assert round_rules(to_plain(compose_config(["train.optimizer=adam"]))).row_progress_power == 0.0
    for override, message in [("federation.clients_per_round=0", "clients_per_round"),
                              ("federation.aggregation=mode", "federation.aggregation"),
                              ("federation.trim_fraction=0.5", "trim_fraction"),
                              ("federation.min_replies=-1", "min_replies"),
                              ("federation.row_normalization=half", "row_normalization")]:
        with pytest.raises(InputError, match=message):
            round_rules(to_plain(compose_config([override])))


OWNERS = {"shared": None, "head": "click"}


def updates(values, examples=(1, 1, 1, 1, 1), clicks=(1, 1, 1, 1, 0)):
    return [ClientUpdate({"shared": np.array([v], np.float32), "head": np.array([v], np.float32)}, e, {"click": c})
            for v, e, c in zip(values, examples, clicks)]


def test_median_and_trimmed_mean_ignore_one_wild_client():
    current = {"shared": np.zeros(1, np.float32), "head": np.zeros(1, np.float32)}
    wild = updates([1.0, 2.0, 3.0, 4.0, 1e6])
    assert aggregate_multitask(current, wild, OWNERS)["shared"][0] > 1e5
    median = aggregate_multitask(current, wild, OWNERS, "median")
    assert median["shared"][0] == 3.0
    assert median["head"][0] == 2.5  # the per-task rule still holds: the fifth client has no clicks
    trimmed = aggregate_multitask(current, wild, OWNERS, "trimmed_mean", 0.2)
    assert trimmed["shared"][0] == pytest.approx(3.0)  # (2 + 3 + 4) / 3
    np.testing.assert_allclose(robust_mean([np.array([1.0, 5.0]), np.array([3.0, 1.0])], "median"), [2.0, 3.0])


def test_robust_aggregation_leaves_row_tables_to_their_count_weighted_mean():
    current = {"t": np.zeros((2, 1), np.float32)}
    rows = (np.array([0]), np.array([1]))
    ups = [ClientUpdate({"t": np.array([[v], [0]], np.float32)}, 1, row_counts={"t": rows}) for v in (1.0, 2.0, 9.0)]
    np.testing.assert_allclose(aggregate(current, ups, {"t": None}, ["t"], "median")["t"], [[4.0], [0.0]])
