"""The per-id bias prior estimated from the Newton sums (tasks/shrinkage.py) and its wiring."""

import numpy as np
import pytest

from core.errors import InputError
from tasks.registry import resolve_tasks
from tasks.shrinkage import EstimatedPrior, empirical_bayes_prior
from tasks.training import BIAS_L2_WITHOUT_SUMS, bias_priors
from tasks.wide import newton_settings, newton_update


def normal_estimates(tau2: float, phi: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ids seen 1-60 times (curvature = rows), each estimate its true bias plus noise of variance phi / H."""
    rng = np.random.default_rng(seed)
    h = rng.integers(1, 61, n).astype(np.float64)
    return rng.normal(0, np.sqrt(tau2), n) + rng.normal(0, np.sqrt(phi / h)), h


@pytest.mark.parametrize("tau2, phi, known", [(0.25, 1.0, True), (0.05, 1.0, True), (0.1, 0.6, False)])
def test_the_prior_is_the_noise_over_the_spread_of_the_true_biases(tau2, phi, known):
    estimates, h = normal_estimates(tau2, phi)
    assert empirical_bayes_prior(estimates, h, known) == pytest.approx(phi / tau2, rel=0.25)


def test_no_spread_beyond_noise_shrinks_every_bias_to_nothing_and_nothing_to_estimate_from_too():
    estimates, h = normal_estimates(0.0, 1.0)
    assert empirical_bayes_prior(estimates, h, True) > 1000
    assert empirical_bayes_prior(np.array([3.0]), np.array([5.0]), True) > 1000
    assert empirical_bayes_prior(np.array([3.0, 1.0]), np.array([0.0, 0.0]), False) > 1000


def test_a_rating_column_of_ids_seen_once_cannot_split_spread_from_noise_and_shrinks_fully():
    """Every id at curvature 1: tau^2 + phi is all the data tells, so no bias is believed."""
    rng = np.random.default_rng(2)
    for spread in (0.0, 0.3):
        estimates = rng.normal(0, np.sqrt(spread + 0.7), 5000)
        assert empirical_bayes_prior(estimates, np.ones(5000), known_dispersion=False) >= 1000
    # Ids seen 1-60 times make the trade no longer flat, and the estimate returns.
    estimates, h = normal_estimates(0.1, 0.6)
    assert empirical_bayes_prior(estimates, h, known_dispersion=False) < 100


def test_a_logit_bias_model_gets_about_the_prior_its_biases_were_drawn_with():
    """Laplace's approximation on real Bernoulli rows at 5 % positives: ids' log-odds spread 0.5."""
    rng = np.random.default_rng(1)
    n_ids, rows = 3000, rng.integers(5, 200, 3000)
    ids = np.repeat(np.arange(n_ids), rows)
    true = rng.normal(0, 0.5, n_ids)
    y = rng.random(len(ids)) < 1 / (1 + np.exp(-(-3.0 + true[ids])))
    p = y.mean()
    g, h = np.bincount(ids, y - p, n_ids), np.bincount(ids, np.full(len(ids), p * (1 - p)), n_ids)
    assert empirical_bayes_prior(g / h, h, known_dispersion=True) == pytest.approx(1 / 0.25, rel=0.35)


def test_auto_is_estimated_by_the_newton_step_and_fixed_where_there_are_no_sums():
    tasks = resolve_tasks(["rating", "purchase"], ["rating", "purchase"],
                          label_stats={"rating": {"mean": 3.0, "std": 1.0}})
    train_cfg = {"bias_l2": {"rating": 7.0, "default": "auto"}, "newton_damping": 1.0, "newton_max_step": 1.0}
    priors = newton_settings(train_cfg, tasks)[0]
    assert priors == {"rating": 7.0, "purchase": EstimatedPrior(known_dispersion=True)}
    assert bias_priors(train_cfg, ["purchase"], auto_as=BIAS_L2_WITHOUT_SUMS) == {"purchase": BIAS_L2_WITHOUT_SUMS}
    # The step takes the prior estimated from the very sums it steps on.
    estimates, h = normal_estimates(0.25, 1.0)
    name = "first_order.tables.purchase.0.weight"
    params = {name: np.zeros((len(h), 1), np.float32)}
    stats = {name: (np.arange(len(h)), estimates * h, h)}
    lam = empirical_bayes_prior(estimates, h, True)
    stepped = newton_update(params, stats, priors, damping=1.0)[name][:, 0]
    np.testing.assert_allclose(stepped, estimates * h / (lam + h), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["Auto", "ten", -1])
def test_a_prior_other_than_auto_or_a_number_is_one_clear_error(value):
    expected = f"train.bias_l2 must be auto or a number >= 0, got {value!r} for task 'click'"
    with pytest.raises(InputError, match=expected):
        bias_priors({"bias_l2": value}, ["click"])


def test_a_logit_bias_with_an_estimated_prior_moves_at_most_the_logit_step_where_curvature_vanishes():
    """An id whose rows are all positive at a saturated p = 1e-6: Newton would move it by ~1/p."""
    tasks = resolve_tasks(["purchase"], ["purchase"])
    priors, damping, bounds = newton_settings({"bias_l2": "auto", "newton_damping": 1.0,
                                               "newton_max_step": 1.0}, tasks)
    name = "first_order.tables.purchase.0.weight"
    h = np.array([1e-6, 1e-6 * 50, 4.0, 5.0])  # two saturated ids, two ordinary ones
    g = np.array([1.0, 50.0, -0.5, 0.7])
    stepped = newton_update({name: np.zeros((4, 1), np.float32)}, {name: (np.arange(4), g, h)}, priors, damping,
                            bounds)[name][:, 0]
    assert np.all(np.abs(stepped) <= 1.0 + 1e-6) and stepped[0] == stepped[1] == pytest.approx(1.0)
