"""The pooled references on tiny hand-made tables whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.references import (IDENTITY, LOGIT, REFERENCES, MerchantSplits, Reference, Rows, fit_bias,
                                   loss, predict_bias, run_references, tune)
from core.errors import InputError
from data.shards import Shard
from tasks.registry import TASKS

FEATURES = ["user_id", "item_id"]
BY_NAME = {r.name: r for r in REFERENCES}
RATING, PURCHASE = TASKS["rating"], TASKS["purchase"]


def shard(users, items, label: str, values) -> Shard:
    return Shard(np.column_stack([users, items]).astype(np.int64),
                 {label: np.asarray(values, np.float32)}, {})


def empty(label: str) -> Shard:
    return shard(np.zeros(0), np.zeros(0), label, np.zeros(0))


def splits_of(frame: dict[str, dict[str, tuple]], label: str) -> dict[str, MerchantSplits]:
    """{merchant: {split: (users, items, labels)}}; a missing split is empty."""
    return {m: MerchantSplits(*(shard(parts[s][0], parts[s][1], label, parts[s][2]) if s in parts else empty(label)
                                for s in ("train", "val", "test")))
            for m, parts in frame.items()}


def split_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: int(0.7 * n)]), np.sort(order[int(0.7 * n): int(0.85 * n)]), np.sort(order[int(0.85 * n):])


def test_mean_is_the_train_mean_and_scores_like_the_models():
    splits = splits_of({
        "a": {"train": ([1, 2], [1, 1], [4.0, 5.0]), "test": ([1, 2], [2, 2], [3.0, 5.0])},
        "b": {"train": ([3, 3], [1, 2], [1.0, 2.0]), "test": ([3], [1], [2.0])},
    }, "rating")
    result = run_references(splits, [RATING], FEATURES, names=["mean"])["mean"]
    mu = 3.0  # (4 + 5 + 1 + 2) / 4
    rmse_a = math.sqrt(((3 - mu) ** 2 + (5 - mu) ** 2) / 2)
    rmse_b = abs(2 - mu)
    assert result.per_merchant["a"]["rating"]["rmse"] == pytest.approx(rmse_a)
    assert result.per_merchant["b"]["rating"]["rmse"] == pytest.approx(rmse_b)
    # merchants combined by test labels, like combine_merchants does for the models
    assert result.final["rating"]["rmse"] == pytest.approx((2 * rmse_a + 1 * rmse_b) / 3)
    assert result.chosen["rating"] == "-"


def test_no_validation_split_tunes_on_a_holdout_then_refits_on_all_train_rows():
    users = np.arange(20)
    y = np.arange(20, dtype=float)
    splits = splits_of({"a": {"train": (users, users, y), "test": ([0], [0], [0.0])}}, "rating")
    result = run_references(splits, [RATING], FEATURES, names=["mean"])["mean"]
    assert result.per_merchant["a"]["rating"]["mae"] == pytest.approx(y.mean())  # every train row, not 90 %


def test_merchant_mean_uses_the_merchants_own_labels_and_falls_back_to_the_global_mean():
    splits = splits_of({
        "a": {"train": ([1, 2], [1, 1], [4.0, 5.0]), "test": ([1], [1], [5.0])},
        "b": {"train": ([3, 3], [1, 2], [1.0, 2.0]), "test": ([3], [1], [2.0])},
        "c": {"train": ([4], [1], [math.nan]), "test": ([4], [1], [4.0])},   # no train rating
    }, "rating")
    result = run_references(splits, [RATING], FEATURES, names=["merchant mean"])["merchant mean"]
    assert result.per_merchant["a"]["rating"]["mae"] == pytest.approx(0.5)   # predicts 4.5
    assert result.per_merchant["b"]["rating"]["mae"] == pytest.approx(0.5)   # predicts 1.5
    assert result.per_merchant["c"]["rating"]["mae"] == pytest.approx(1.0)   # predicts 3.0, the global mean


def additive_table(rng: np.random.Generator):
    n_u, n_i, n_m = 12, 8, 3
    bu, bi, bm = rng.normal(0, 1, n_u), rng.normal(0, 1, n_i), rng.normal(0, 0.5, n_m)
    u, i, m = (g.ravel() for g in np.meshgrid(np.arange(n_u), np.arange(n_i), np.arange(n_m), indexing="ij"))
    return np.column_stack([u, i, m]), (bu, bi, bm)


def test_bias_model_recovers_additive_biases_on_noise_free_ratings():
    codes, (bu, bi, bm) = additive_table(np.random.default_rng(0))
    y = 3.0 + bu[codes[:, 0]] + bi[codes[:, 1]] + bm[codes[:, 2]]
    model, _ = fit_bias(codes, (12, 8, 3), y, IDENTITY, {"lam": 1e-6}, sweeps=200)
    np.testing.assert_allclose(predict_bias(model, codes), y, atol=1e-3)


def test_bias_model_in_logit_space_recovers_additive_log_odds():
    codes, (bu, bi, bm) = additive_table(np.random.default_rng(1))
    p = 1 / (1 + np.exp(-(-1.0 + 0.5 * bu[codes[:, 0]] + 0.5 * bi[codes[:, 1]] + bm[codes[:, 2]])))
    k = 400  # each cell repeated k times, with round(p * k) positives: the MLE is (almost) p itself
    positives = np.round(p * k).astype(int)
    rows = np.repeat(codes, k, axis=0)
    y = (np.tile(np.arange(k), len(codes)) < np.repeat(positives, k)).astype(float)
    model, _ = fit_bias(rows, (12, 8, 3), y, LOGIT, {"lam": 1e-6})
    np.testing.assert_allclose(predict_bias(model, codes), p, atol=0.01)


def test_a_cold_id_contributes_nothing():
    rng = np.random.default_rng(2)
    n = 300
    ids = np.column_stack([rng.integers(0, 10, n), rng.integers(0, 6, n), rng.integers(0, 2, n)])
    y = 3 + 0.3 * ids[:, 0] - 0.2 * ids[:, 1] + ids[:, 2] + rng.normal(0, 0.1, n)
    train, val = Rows(ids[:200], y[:200]), Rows(ids[200:], y[200:])
    cold = np.array([[999, 3, 1]])  # user 999 never trained
    for name in ("bias model", "MF"):
        reference = BY_NAME[name]
        base = {"lam": 1.0} if name == "MF" else {}
        model, vocab, _, _ = tune(reference, train, val, IDENTITY, base=base)
        codes = vocab.encode(cold)
        assert codes[0, 0] == -1
        bias = model if name == "bias model" else model.bias
        expected = bias.mu + bias.biases[1][codes[0, 1]] + bias.biases[2][codes[0, 2]]
        assert reference.predict(model, codes)[0] == pytest.approx(expected, abs=1e-5)


def test_logistic_regression_separates_a_separable_toy():
    rng = np.random.default_rng(3)

    def part(n):
        users, items = rng.integers(0, 30, n), rng.integers(0, 10, n)
        return users, items, (items < 5).astype(float)  # items 0-4 always bought, 5-9 never
    splits = {}
    for m in ("a", "b"):
        parts = [part(n) for n in (300, 60, 60)]
        splits[m] = MerchantSplits(*(shard(u, i, "purchase", y) for u, i, y in parts))
    result = run_references(splits, [PURCHASE], FEATURES, names=["linear (one-hot)"])["linear (one-hot)"]
    assert result.final["purchase"]["auc"] == pytest.approx(1.0)
    assert result.final["purchase"]["logloss"] < 0.1
    assert result.chosen["purchase"].startswith("logistic regression, C=")


def test_mf_beats_the_bias_model_on_a_rank_one_interaction():
    rng = np.random.default_rng(4)
    n_u, n_i = 80, 60
    pu, qi = rng.choice([-1.0, 1.0], n_u), rng.choice([-1.0, 1.0], n_i)
    u, i = (g.ravel() for g in np.meshgrid(np.arange(n_u), np.arange(n_i), indexing="ij"))
    y = 3 + pu[u] * qi[i] + rng.normal(0, 0.1, len(u))
    tr, va, te = split_rows(len(u))
    splits = {"a": MerchantSplits(*(shard(u[p], i[p], "rating", y[p]) for p in (tr, va, te)))}
    results = run_references(splits, [RATING], FEATURES, names=["bias model", "MF"])
    bias_rmse, mf_rmse = (results[n].final["rating"]["rmse"] for n in ("bias model", "MF"))
    assert bias_rmse > 0.9
    assert mf_rmse < 0.5 * bias_rmse


def test_tuning_keeps_the_grid_value_with_the_best_validation_loss():
    constant = Reference("constant", fit=lambda codes, sizes, y, link, s, val=None, seed=0: (s["c"], s),
                         predict=lambda model, codes: np.full(len(codes), model),
                         grid=lambda link: [{"c": 1.0}, {"c": 2.0}, {"c": 3.0}])
    train = Rows(np.zeros((4, 3), np.int64), np.ones(4))
    val = Rows(np.zeros((2, 3), np.int64), np.array([2.1, 2.3]))
    model, _, settings, tried = tune(constant, train, val, IDENTITY)
    assert settings == {"c": 2.0} and model == 2.0
    assert tried["c=2"] == pytest.approx(loss(IDENTITY, val.y, np.full(2, 2.0)))

    # the bias model's lambda: the chosen one has the lowest validation loss of its grid
    rng = np.random.default_rng(5)
    ids = np.column_stack([rng.integers(0, 40, 400), rng.integers(0, 30, 400), rng.integers(0, 2, 400)])
    y = 3 + 0.05 * ids[:, 0] + rng.normal(0, 1, 400)
    _, _, settings, tried = tune(BY_NAME["bias model"], Rows(ids[:300], y[:300]), Rows(ids[300:], y[300:]), IDENTITY)
    assert tried[f"lam={settings['lam']:g}"] == min(tried.values())
    assert len(set(tried.values())) == len(tried)


def test_references_need_user_and_item_features():
    splits = splits_of({"a": {"train": ([1], [1], [4.0]), "test": ([1], [1], [5.0])}}, "rating")
    with pytest.raises(InputError, match="user_id and item_id"):
        run_references(splits, [RATING], ["user_id", "category"])
    # user_id and item_id are found wherever they sit among the features
    three = {m: MerchantSplits(*(Shard(np.column_stack([s.features[:, :1] * 0 + 7, s.features[:, 1], s.features[:, 0]]),
                                      s.labels, {}) for s in (v.train, v.val, v.test))) for m, v in splits.items()}
    result = run_references(three, [RATING], ["category", "item_id", "user_id"], names=["mean"])["mean"]
    assert result.final["rating"]["rmse"] == pytest.approx(1.0)


def test_other_hashed_features_are_read_so_cold_items_get_their_category():
    """Items of category 0 rate 5, of category 1 rate 1; the test items are cold. With the category
    column the bias model predicts each cold item's category; with user and item only, the mean."""
    rng = np.random.default_rng(0)
    items = np.arange(40)
    category = items % 2
    users = rng.integers(0, 10, 40)
    train = Shard(np.column_stack([users, items, category]).astype(np.int64),
                  {"rating": np.where(category == 0, 5.0, 1.0).astype(np.float32)}, {})
    test = Shard(np.array([[0, 100, 0], [1, 101, 1]], np.int64), {"rating": np.array([5.0, 1.0], np.float32)}, {})
    val = Shard(np.zeros((0, 3), np.int64), {"rating": np.zeros(0, np.float32)}, {})
    splits = {"a": MerchantSplits(train, val, test)}
    with_category = run_references(splits, [RATING], ["user_id", "item_id", "category"], names=["bias model"])
    assert with_category["bias model"].final["rating"]["rmse"] < 0.2
    user_and_item = {"a": MerchantSplits(*(Shard(s.features[:, :2], s.labels, {}) for s in (train, val, test)))}
    without = run_references(user_and_item, [RATING], ["user_id", "item_id"], names=["bias model"])
    assert without["bias model"].final["rating"]["rmse"] == pytest.approx(2.0, abs=1e-6)


def test_refit_tunes_on_validation_then_fits_on_train_and_validation_together():
    """Under refit (the run's models refit their biases: refit_biases) the validation rows join the
    fit once they chose the settings: the mean is theirs too, and an item first seen there has a bias."""
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 300), rng.integers(0, 10, 300)
    y = 3.0 + 0.3 * items + rng.normal(0, 0.1, 300)
    splits = splits_of({"a": {"train": (users, items, y), "val": ([1, 2, 3, 4], [99, 99, 99, 99], [5.0] * 4),
                              "test": ([5, 6], [99, 99], [5.0, 5.0])}}, "rating")
    plain, refit = (run_references(splits, [RATING], FEATURES, names=["mean", "bias model"], refit=r) for r in (False, True))
    assert plain["mean"].per_merchant["a"]["rating"]["mae"] == pytest.approx(5.0 - y.mean())
    assert refit["mean"].per_merchant["a"]["rating"]["mae"] == pytest.approx(5.0 - np.concatenate([y, [5.0] * 4]).mean())
    # item 99 is cold to the plain fit (the train mean + nothing) and has a bias towards 5 once refitted
    assert refit["bias model"].per_merchant["a"]["rating"]["mae"] < plain["bias model"].per_merchant["a"]["rating"]["mae"] - 0.2
    assert refit["bias model"].chosen == plain["bias model"].chosen  # the settings the validation rows chose
