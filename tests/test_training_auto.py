"""train.keep_optimizer_state=auto and train.average_decay=auto: decided by the run's tasks, the same
on every side (tasks/experiment.py resolved_training)."""

import pytest

from core.config import compose_config, to_plain
from tasks.experiment import open_experiment, resolved_training
from tasks.registry import TASKS


def test_the_defaults_are_auto():
    train = to_plain(compose_config([]))["train"]
    assert train["keep_optimizer_state"] == "auto" and train["average_decay"] == "auto"


@pytest.mark.parametrize("tasks, keep, decay", [
    (["purchase", "click"], True, 0.5),
    (["click"], True, 0.5),
    (["rating", "purchase", "click"], False, 0.0),
    (["rating"], False, 0.0),
])
def test_auto_keeps_the_optimizer_state_and_averages_rounds_only_without_a_rating_task(tasks, keep, decay):
    train = resolved_training({"keep_optimizer_state": "auto", "average_decay": "auto", "lr": 0.05},
                              [TASKS[t] for t in tasks])
    assert train == {"keep_optimizer_state": keep, "average_decay": decay, "lr": 0.05}


def test_explicit_settings_are_kept_whatever_the_tasks():
    given = {"keep_optimizer_state": False, "average_decay": 0.2}
    assert resolved_training(given, [TASKS["click"]]) == given
    assert resolved_training({"keep_optimizer_state": True, "average_decay": 0.0}, [TASKS["rating"]]) \
        == {"keep_optimizer_state": True, "average_decay": 0.0}


@pytest.mark.parametrize("overrides, keep, decay", [([], False, 0.0), (["tasks=[purchase,click]"], True, 0.5)])
def test_the_experiment_every_side_builds_carries_the_resolved_settings(tiny_cfg, overrides, keep, decay):
    experiment = open_experiment(tiny_cfg(*overrides))
    assert experiment.cfg["train"]["keep_optimizer_state"] is keep
    assert experiment.cfg["train"]["average_decay"] == decay
