"""The scored model is the rounds' moving average (tasks/averaging.py): the math, the rounds it starts at,
and real runs in which only what is scored changes, never what is trained."""

import numpy as np
import pytest
import torch

from core.config import compose_config, to_plain
from core.errors import InputError
from server_app.orchestration import run_job
from tasks.averaging import RoundAverage, moving_average, scoring_average
from tasks.experiment import open_experiment
from tasks.state import snapshot_state
from tests.conftest import TINY


def test_the_average_weighs_the_past_by_the_decay_and_takes_counters_as_they_are():
    average = {"w": np.array([1.0, 3.0], np.float32), "steps": np.array([4], np.int64), "t": torch.tensor([2.0]),
               "bias": np.array(1.0, np.float32)}  # 0-d, as a task's global bias
    current = {"w": np.array([3.0, 3.0], np.float32), "steps": np.array([5], np.int64), "t": torch.tensor([4.0]),
               "bias": np.array(5.0, np.float32)}
    out = moving_average(average, current, 0.75)
    np.testing.assert_allclose(out["w"], [1.5, 3.0])
    assert isinstance(out["bias"], np.ndarray) and out["bias"].shape == () and out["bias"] == 2.0
    assert out["w"].dtype == np.float32 and out["steps"].tolist() == [5] and out["t"].tolist() == [2.5]


def test_rounds_before_the_deep_part_trains_are_scored_as_they_are_and_not_averaged():
    average = RoundAverage(0.5, first_round=2)
    untrained = {"w": np.array([9.0])}
    assert average.offer(0, untrained) is untrained and average.offer(1, untrained) is untrained
    assert average.average is None
    assert average.offer(2, {"w": np.array([2.0])})["w"].tolist() == [2.0]  # the first average is the round itself
    assert average.offer(3, {"w": np.array([4.0])})["w"].tolist() == [3.0]
    assert average.offer(4, {"w": np.array([5.0])})["w"].tolist() == [4.0]
    off = RoundAverage(0.0, first_round=1)
    assert off.offer(5, untrained) is untrained and off.average is None


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_0_to_1_is_one_clear_error(decay):
    with pytest.raises(InputError, match=rf"^train.average_decay={decay}: must be in \[0, 1\)"):
        RoundAverage(decay, first_round=1)


def test_the_model_holds_the_average_only_while_it_is_scored():
    experiment = open_experiment(to_plain(compose_config(TINY)))
    model, weighting = experiment.new_model(), experiment.new_weighting()
    average = RoundAverage(0.5, first_round=1)
    before = snapshot_state(model, weighting)
    average.offer(1, {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in before.items()})
    with scoring_average(model, weighting, average, 2):
        inside = snapshot_state(model, weighting)
    after = snapshot_state(model, weighting)
    moved = [k for k, v in before.items() if v.is_floating_point() and v.abs().sum() > 0]
    assert moved
    for name in moved:
        torch.testing.assert_close(inside[name], before[name] * 0.5)  # half-way from the zeros to the model
        torch.testing.assert_close(after[name], before[name])  # training goes on from its own state


def centralized(out, decay, rounds):
    cfg = to_plain(compose_config([*TINY, "mode=centralized", "ranking.enabled=false", "select_round=last",
                                   f"federation.rounds={rounds}", f"train.average_decay={decay}"]))
    return run_job(cfg, out)


def test_a_run_scores_and_keeps_the_average_of_the_rounds_it_trained(tmp_path):
    trained = {n: centralized(tmp_path / f"plain{n}", 0.0, n) for n in (2, 3)}  # round n's own model
    averaged = centralized(tmp_path / "averaged", 0.5, 3)
    # Training is untouched: the same losses every round; round 2 (the first that trains the deep part
    # after the bias-only round) scores its own model, later rounds the average.
    plain = trained[3].rounds
    assert [r.train_loss for r in averaged.rounds] == [r.train_loss for r in plain]
    assert [r.tasks for r in averaged.rounds[:3]] == [r.tasks for r in plain[:3]]
    assert averaged.rounds[3].tasks != plain[3].tasks
    states = {n: result.model_state for n, result in trained.items()}
    for name, value in averaged.model_state.items():
        if value.is_floating_point():
            expected = 0.5 * states[2][name] + 0.5 * states[3][name]
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
