"""Recalibrating a head on validation from sums alone (tasks/calibration.py): the moments, the step,
when a head is left as it is, and that sums combined over merchants give the pooled fit."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tasks.calibration import MOMENTS, calibration_moments, calibration_step, fit_calibration, head_output
from tasks.metrics import COUNT, combine_counted
from tasks.registry import resolve_tasks

STATS = {"rating": {"mean": 4.0, "std": 0.8}, "purchase": {"mean": 0.05, "std": 0.2}, "click": {"mean": 0.2, "std": 0.4}}
RATING, PURCHASE, CLICK = resolve_tasks(None, list(STATS), label_stats=STATS)


def miscalibrated(n=20000, seed=0, slope=0.6, shift=0.8):
    """Scores z whose true logit is slope z + shift: by default the right order, over-confident, too low."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-2.0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(slope * z + shift)))).astype(float)
    return z, y, 1 / (1 + np.exp(-z))


def test_a_rating_is_fitted_exactly_in_one_step():
    rng = np.random.default_rng(1)
    prediction = rng.normal(4.0, 0.5, 5000)
    y = 0.7 * prediction + 1.4 + rng.normal(0, 0.3, 5000)
    a, b = calibration_step(calibration_moments(RATING, y, prediction))
    z, target = head_output(RATING, prediction), (y - RATING.center) / RATING.scale
    assert (a, b) == pytest.approx(tuple(np.polyfit(z, target, 1)), abs=1e-9)


def measured(task, y, z):
    """What a validation pass returns for the head recalibrated to a z + b: its moments and label count."""
    return lambda calibration: {task.name: {**calibration_moments(
        task, y, 1 / (1 + np.exp(-(calibration[task.name][0] * z + calibration[task.name][1])))), COUNT: len(y)}}


@pytest.mark.parametrize("slope, shift", [(0.6, 0.8), (1.3, -0.5), (0.2, 2.0)])
def test_newton_steps_on_the_moments_reach_platt_scaling(slope, shift):
    """Even where the first step from (1, 0) overshoots to a reversed slope (0.2, 2.0: a head far
    over-confident), the damped steps reach scikit-learn's fit."""
    z, y, p = miscalibrated(slope=slope, shift=shift)
    platt = LogisticRegression(C=1e9, tol=1e-10).fit(z[:, None], y)
    measure = measured(PURCHASE, y, z)
    fitted = fit_calibration(measure({"purchase": (1.0, 0.0)}), [PURCHASE], measure)
    assert fitted["purchase"] == pytest.approx((platt.coef_[0, 0], platt.intercept_[0]), abs=2e-3)


def test_merchants_sums_combined_by_label_counts_are_the_pooled_sums():
    z, y, p = miscalibrated()
    parts = {"big": slice(0, 15000), "small": slice(15000, None)}
    per_merchant = {m: {"purchase": calibration_moments(PURCHASE, y[s], p[s])} for m, s in parts.items()}
    counts = {m: {"purchase": len(y[s])} for m, s in parts.items()}
    combined = combine_counted(per_merchant, counts)["purchase"]
    pooled = calibration_moments(PURCHASE, y, p)
    assert combined[COUNT] == len(y) and all(combined[k] == pytest.approx(pooled[k], rel=1e-9) for k in MOMENTS)


def test_a_head_is_left_as_trained_on_few_labels_or_a_constant_output():
    z, y, p = miscalibrated()
    validation = {"click": {**calibration_moments(CLICK, y, p), COUNT: 2000},
                  "purchase": {**calibration_moments(PURCHASE, y, p), COUNT: 1000}}
    # click: 2000 labels x 0.2 = 400 of the rarer class; purchase: 1000 x 0.05 = 50, under the 100 a verdict needs
    measure = measured(CLICK, y, z)
    assert set(fit_calibration(validation, [PURCHASE, CLICK], measure)) == {"click"}
    assert fit_calibration(validation, [CLICK], measure, skip=["click"]) == {}
    constant = {"click": {**calibration_moments(CLICK, y, np.full_like(p, 0.2)), COUNT: 2000}}
    assert calibration_step(constant["click"]) is None and fit_calibration(constant, [CLICK], measure) == {}
    assert calibration_step({}) is None
