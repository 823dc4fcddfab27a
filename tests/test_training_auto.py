"""train.keep_optimizer_state, train.average_decay and train.wide_rounds = auto: decided by the run's
tasks, the same on every side (tasks/experiment.py resolved_training)."""

import pytest

from core.config import compose_config, to_plain
from tasks.experiment import open_experiment, resolved_training
from tasks.registry import TASKS


def test_the_defaults_are_auto():
    train = to_plain(compose_config([]))["train"]
    assert train["keep_optimizer_state"] == train["average_decay"] == train["wide_rounds"] == "auto"


@pytest.mark.parametrize("tasks, keep, decay, wide", [
    (["purchase", "click"], True, 0.5, 0),
    (["click"], True, 0.5, 0),
    (["rating", "purchase", "click"], False, 0.0, 1),
    (["rating"], True, 0.0, 1),  # ratings alone: the kept state, not the rest
])
def test_auto_keeps_the_optimizer_state_unless_ratings_mix_with_binary_tasks_and_averages_rounds_and_trains_deep_from_round_1_only_without_a_rating_task(
        tasks, keep, decay, wide):
    train = resolved_training({"keep_optimizer_state": "auto", "average_decay": "auto", "wide_rounds": "auto",
                               "lr": 0.05}, [TASKS[t] for t in tasks])
    assert train == {"keep_optimizer_state": keep, "average_decay": decay, "wide_rounds": wide, "lr": 0.05}


def test_explicit_settings_are_kept_whatever_the_tasks():
    given = {"keep_optimizer_state": False, "average_decay": 0.2, "wide_rounds": 2}
    assert resolved_training(given, [TASKS["click"]]) == given
    assert resolved_training({"keep_optimizer_state": True, "average_decay": 0.0, "wide_rounds": 0}, [TASKS["rating"]]) \
        == {"keep_optimizer_state": True, "average_decay": 0.0, "wide_rounds": 0}


@pytest.mark.parametrize("overrides, keep, decay, wide", [([], False, 0.0, 1), (["tasks=[purchase,click]"], True, 0.5, 0),
                                                         (["tasks=[rating]"], True, 0.0, 1)])
def test_the_experiment_every_side_builds_carries_the_resolved_settings(tiny_cfg, overrides, keep, decay, wide):
    experiment = open_experiment(tiny_cfg(*overrides))
    assert experiment.cfg["train"]["keep_optimizer_state"] is keep
    assert experiment.cfg["train"]["average_decay"] == decay
    assert experiment.cfg["train"]["wide_rounds"] == wide
