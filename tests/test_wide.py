"""The first-order part fitted by Newton steps on summed statistics (tasks/wide.py)."""

import numpy as np
import pytest
import torch

from core.config import compose_config, to_plain
from data.features import FeatureSpec
from data.shards import Shard
from tasks.experiment import resolved_training
from tasks.models import build_model
from tasks.registry import resolve_tasks
from tasks.wide import apply_newton, newton_update, sum_statistics, wide_statistics

CPU = torch.device("cpu")


def rating_setup(items, ratings, buckets=(6,)):
    ratings = np.asarray(ratings, np.float32)
    tasks = resolve_tasks(["rating"], ["rating"], label_stats={"rating": {"mean": float(ratings.mean()), "std": 1.0}})
    model = build_model({**to_plain(compose_config([]))["model"], "dropout": 0.0}, list(buckets), ["rating"])
    shard = Shard(np.asarray(items, np.int64).reshape(-1, len(buckets)), {"rating": ratings}, {})
    return model, tasks, shard


def test_one_newton_step_on_one_feature_is_the_bias_models_regularised_mean():
    items, ratings = [0, 0, 0, 1, 2, 2], [5, 4, 5, 1, 3, 4]
    model, tasks, shard = rating_setup(items, ratings)
    apply_newton(model, wide_statistics(model, shard, tasks, CPU), {"bias_l2": 2.0, "newton_damping": 1.0}, tasks)
    residual = np.asarray(ratings) - np.mean(ratings)  # the untrained model predicts the mean
    expected = [residual[np.asarray(items) == i].sum() / (2.0 + (np.asarray(items) == i).sum()) for i in range(3)]
    table = model.first_order.tables["rating"][0].weight.detach().numpy()[:, 0]
    np.testing.assert_allclose(table[:3], expected, rtol=1e-5)
    assert np.all(table[3:] == 0)  # ids without rows (cold) are not touched
    assert float(model.first_order.bias["rating"].detach()) == pytest.approx(0.0, abs=1e-6)  # residuals sum to 0


def test_statistics_summed_over_merchants_equal_the_pooled_statistics():
    rng = np.random.default_rng(0)
    features = rng.integers(0, 8, (40, 2))
    labels = {"click": (rng.random(40) < 0.3).astype(np.float32),
              "rating": np.where(rng.random(40) < 0.5, rng.integers(1, 6, 40), np.nan).astype(np.float32)}
    tasks = resolve_tasks(["rating", "click"], ["rating", "click"],
                          label_stats={"rating": {"mean": 3.0, "std": 1.2}, "click": {"mean": 0.3}})
    torch.manual_seed(0)
    model = build_model({**to_plain(compose_config([]))["model"], "embedding_init_std": 0.1}, [8, 8], ["rating", "click"])
    pooled = wide_statistics(model, Shard(features, labels, {}), tasks, CPU)
    parts = [wide_statistics(model, Shard(features[s], {k: v[s] for k, v in labels.items()}, {}), tasks, CPU)
             for s in (slice(0, 13), slice(13, 30), slice(30, 40))]
    summed = sum_statistics(parts)
    assert set(summed) == set(pooled)
    for name in pooled:
        for a, b in zip(summed[name], pooled[name]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_a_logit_step_moves_towards_the_labels_and_the_prior_holds_rare_ids_back():
    params = {"first_order.tables.click.0.weight": np.zeros((3, 1), np.float32)}
    # row 0: 100 rows all clicked (g = 50, h = 25 at p = 0.5); row 1: 1 row clicked (g = 0.5, h = 0.25)
    stats = {"first_order.tables.click.0.weight": (np.array([0, 1]), np.array([50.0, 0.5]), np.array([25.0, 0.25]))}
    out = newton_update(params, stats, lam=1.0, damping=1.0)
    table = out["first_order.tables.click.0.weight"][:, 0]
    assert table[0] == pytest.approx(50 / 26) and table[1] == pytest.approx(0.5 / 1.25) and table[2] == 0


def test_the_global_bias_steps_first_and_the_columns_step_on_what_it_leaves():
    """Every rating 1 above the model on every row: the global bias (no prior) takes it all and the
    per-id columns, whose sums held the same residual, take nothing; stepped at once, each took it too."""
    params = {"first_order.bias.rating": np.float32(0.0),
              **{f"first_order.tables.rating.{j}.weight": np.zeros((2, 1), np.float32) for j in (0, 1)}}
    ids, residual, rows = np.array([0, 1]), np.array([6.0, 4.0]), np.array([6.0, 4.0])
    stats = {"first_order.bias.rating": (np.array([0]), np.array([10.0]), np.array([10.0])),
             **{f"first_order.tables.rating.{j}.weight": (ids, residual, rows) for j in (0, 1)}}
    out = newton_update(params, stats, lam=1.0, damping=1.0)
    assert float(out["first_order.bias.rating"]) == pytest.approx(1.0)
    for j in (0, 1):
        np.testing.assert_allclose(out[f"first_order.tables.rating.{j}.weight"][:, 0], 0.0, atol=1e-12)


def test_repeated_logit_steps_converge_to_the_penalised_optimum():
    """The steps as the server takes them, each on sums at the last step's model, reach the L2-penalised
    logistic regression on one-hot ids (scikit-learn, C = 1 / lam, unpenalised intercept): within 0.007
    of its scores after 40 steps, where stepping the columns on the global bias's residual too left
    them 0.13 away."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(0)
    n, sizes, lam = 4000, (40, 6), 2.0
    codes = np.stack([rng.integers(0, k, n) for k in sizes], axis=1)
    truth = -2.5 + rng.normal(0, 1, sizes[0])[codes[:, 0]] + rng.normal(0, 0.5, sizes[1])[codes[:, 1]]
    y = (rng.random(n) < 1 / (1 + np.exp(-truth))).astype(np.float64)
    params = {"first_order.bias.click": np.float32(np.log(y.mean() / (1 - y.mean()))),
              **{f"first_order.tables.click.{j}.weight": np.zeros((k, 1), np.float32) for j, k in enumerate(sizes)}}
    for _ in range(40):
        z = float(params["first_order.bias.click"]) + sum(
            params[f"first_order.tables.click.{j}.weight"][codes[:, j], 0].astype(np.float64) for j in range(2))
        p = 1 / (1 + np.exp(-z))
        g, h = y - p, p * (1 - p)
        stats = {"first_order.bias.click": (np.array([0]), np.array([g.sum()]), np.array([h.sum()])),
                 **{f"first_order.tables.click.{j}.weight": (np.arange(k), np.bincount(codes[:, j], g, k),
                                                             np.bincount(codes[:, j], h, k))
                    for j, k in enumerate(sizes)}}
        params = {**params, **newton_update(params, stats, lam=lam, damping=0.7, max_step={"click": 1.0})}
    one_hot = sparse.hstack([sparse.csr_matrix((np.ones(n), (np.arange(n), codes[:, j])), shape=(n, k))
                             for j, k in enumerate(sizes)]).tocsr()
    reference = LogisticRegression(C=1 / lam, tol=1e-12, max_iter=10000).fit(one_hot, y)
    fitted = np.concatenate([params[f"first_order.tables.click.{j}.weight"][:, 0] for j in range(2)])
    # the split of a constant between the intercept and the columns is set by the prior alone: compare scores
    ours = float(params["first_order.bias.click"]) + one_hot @ fitted
    np.testing.assert_allclose(ours, reference.decision_function(one_hot), atol=0.02)


def test_a_prior_free_step_is_bounded_and_a_fixed_prior_step_is_not():
    """Saturated predictions leave a vanishing curvature: a prior-free bias, a logit's or a rating's,
    stops at the bound; a per-id bias under a fixed prior is held by that prior instead."""
    from core.errors import InputError
    from tasks.wide import newton_settings
    tasks = resolve_tasks(["rating", "click"], ["rating", "click"],
                          label_stats={"rating": {"mean": 3.0, "std": 1.0}, "click": {"mean": 0.3}})
    train_cfg = {"bias_l2": 1.0, "newton_damping": 1.0, "newton_max_step": 1.0}
    priors, damping, bounds = newton_settings(train_cfg, tasks)
    assert bounds == {"rating": 1.0, "click": 1.0} and damping == 1.0 and priors == {"rating": 1.0, "click": 1.0}
    params = {**{f"first_order.bias.{t}": np.float32(0.0) for t in ("rating", "click")},
              "first_order.tables.click.0.weight": np.zeros((2, 1), np.float32)}
    stats = {name: (np.array([0]), np.array([57.0]), np.array([10.0])) for name in params}  # 5.7 without a prior
    out = newton_update(params, stats, priors, damping, bounds)
    assert float(out["first_order.bias.click"]) == pytest.approx(1.0)
    assert float(out["first_order.bias.rating"]) == pytest.approx(1.0)
    # past the bound too (its prior holds it), on what the global bias's step of 1 left of its sums
    assert float(out["first_order.tables.click.0.weight"][0, 0]) == pytest.approx((57.0 - 10.0 * 1.0) / 11.0)
    stats["first_order.bias.click"] = (np.array([0]), np.array([-0.5]), np.array([10.0]))  # within the bound
    out = newton_update(params, stats, priors, damping, bounds)
    assert float(out["first_order.bias.click"]) == pytest.approx(-0.05)
    assert newton_settings({**train_cfg, "newton_max_step": None}, tasks)[2] == {}
    with pytest.raises(InputError, match="train.newton_max_step must be > 0 or null, got 0"):
        newton_settings({**train_cfg, "newton_max_step": 0}, tasks)


def test_each_task_takes_its_own_prior():
    from core.errors import InputError
    from tasks.training import bias_priors
    priors = bias_priors({"bias_l2": {"purchase": 1.0, "default": 9.0}}, ["click", "purchase"])
    assert priors == {"click": 9.0, "purchase": 1.0}
    params = {f"first_order.tables.{t}.0.weight": np.zeros((1, 1), np.float32) for t in priors}
    stats = {name: (np.array([0]), np.array([1.0]), np.array([1.0])) for name in params}
    out = newton_update(params, stats, lam=priors, damping=1.0)
    assert float(out["first_order.tables.purchase.0.weight"][0, 0]) == pytest.approx(1 / 2)
    assert float(out["first_order.tables.click.0.weight"][0, 0]) == pytest.approx(1 / 10)
    with pytest.raises(InputError, match="train.bias_l2 names no prior for task 'rating' and has no default"):
        bias_priors({"bias_l2": {"purchase": 1.0}}, ["rating"])


def test_a_bias_only_column_is_fitted_once_by_the_trainer_each_row_on_its_own_merchants_rows():
    """The merchant as a bias-only column: two merchants share items but not rating levels."""
    from tasks.training import BIAS_L2_WITHOUT_SUMS, bias_priors, make_optimizer
    from tasks.weighting import build_weighting
    from tasks.wide import averaged_by_rows, has_unfitted_rows, newton_fitted, train_round
    rng = np.random.default_rng(0)
    merchant = np.repeat([1, 3], 60)
    features = np.column_stack([rng.integers(0, 8, 120), rng.integers(0, 8, 120), merchant])
    ratings = np.clip(np.round(np.where(merchant == 1, 4.5, 2.0) + rng.normal(0, 1, 120)), 1, 5).astype(np.float32)
    tasks = resolve_tasks(["rating"], ["rating"], label_stats={"rating": {"mean": float(ratings.mean()), "std": 1.5}})
    cfg = to_plain(compose_config([]))
    cfg["train"] = resolved_training(cfg["train"], tasks)  # train.*=auto decided by the tasks, as every side does
    torch.manual_seed(0)
    model = build_model({**cfg["model"], "dropout": 0.0, "embedding_init_std": 0.1},
                        FeatureSpec((8, 8), bias_buckets=(4,)), ["rating"])
    assert len(model.embedding.tables) == 2 and model.first_order.columns == [0, 1, 2]
    merchant_table = "first_order.tables.rating.2.weight"
    assert merchant_table not in newton_fitted(model, cfg["train"]) and merchant_table in averaged_by_rows(model, cfg)
    weighting = build_weighting(cfg["loss"], ["rating"])
    optimizer = make_optimizer(model, weighting, cfg["train"])
    assert all(p is not model.first_order.tables["rating"][2].weight for g in optimizer.param_groups for p in g["params"])
    first = merchant == 1
    shard = Shard(features[first], {"rating": ratings[first]}, {})
    assert has_unfitted_rows(model, shard, tasks)
    _, stats = train_round(model, weighting, optimizer, shard, tasks, cfg["train"], 0, CPU, server_round=2)
    assert not has_unfitted_rows(model, shard, tasks)  # later rounds skip the pass over its rows
    assert merchant_table not in stats and "first_order.tables.rating.0.weight" in stats  # Newton: the embedded ones
    bias = model.first_order.tables["rating"][2].weight.detach()[:, 0].double()
    assert bias[0] == bias[2] == bias[3] == 0 and bias[1] > 0  # a merchant's rows set its row alone
    # Its value: the regularised mean of the standardised residual the rest of the model leaves.
    model.eval()
    with torch.no_grad():
        rest = model(torch.as_tensor(features[first]))["rating"].double() - bias[1]
    residual = (torch.as_tensor(ratings[first]).double() - tasks[0].center) / tasks[0].scale - rest
    # auto has no sums across merchants to estimate a bias-only row's prior from: the fixed fallback
    lam = bias_priors(cfg["train"], ["rating"], auto_as=BIAS_L2_WITHOUT_SUMS)["rating"]
    assert float(bias[1]) == pytest.approx(float(residual.sum()) / (lam + int(first.sum())), rel=1e-4)
    # Fitted once, then held: a later round's epochs and refit leave it as it is.
    train_round(model, weighting, optimizer, shard, tasks, cfg["train"], 1, CPU, server_round=3)
    assert float(model.first_order.tables["rating"][2].weight[1, 0].detach()) == float(bias[1])
    # The deep part never reads it: another merchant moves a row's output by the biases' difference only.
    with torch.no_grad():
        model.first_order.tables["rating"][2].weight[3] = -0.25
        other = features[first].copy()
        other[:, 2] = 3
        shift = model(torch.as_tensor(features[first]))["rating"] - model(torch.as_tensor(other))["rating"]
    torch.testing.assert_close(shift.double(), torch.full_like(shift.double(), float(bias[1]) + 0.25), rtol=1e-5,
                               atol=1e-5)
