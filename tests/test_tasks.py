import math

import numpy as np
import pytest
import torch

from core.errors import InputError
from data.shards import Shard
from tasks.metrics import (auc_difference_error, auc_standard_error, binary_metrics, combine_merchants, combined_standard_error, flatten,
                          rmse_difference_error, rmse_standard_error, split_counts, unflatten, with_counts)
from tasks.models import build_model, parameter_tasks
from tasks.registry import TASKS, resolve_tasks
from tasks.training import evaluate, make_optimizer, masked_task_losses, train_epochs
from tasks.weighting import build_weighting

ALL = list(TASKS.values())
# Random embedding rows: with the default zero rows a few steps give no gradient to weights reading them
# (the pairwise term's weights among them).
MODEL = {"name": "shared_bottom", "embedding_dim": 4, "expert_dims": [8], "tower_dims": [4], "dropout": 0.0,
         "embedding_init_std": 0.05}
TRAIN = {"optimizer": "adam", "lr": 0.01, "local_epochs": 1, "batch_size": 4}


def test_losses_only_see_labelled_rows():
    outputs = {"rating": torch.tensor([1.0, 100.0, 3.0]), "purchase": torch.zeros(3), "click": torch.zeros(3)}
    labels = {"rating": torch.tensor([2.0, math.nan, 3.0]), "purchase": torch.full((3,), math.nan),
              "click": torch.tensor([1.0, 0.0, 1.0])}
    losses = masked_task_losses(outputs, labels, ALL)
    assert set(losses) == {"rating", "click"}                        # no purchase label in this batch
    assert losses["rating"].item() == pytest.approx(((1 - 2) ** 2 + 0) / 2)  # the 100 is never seen


def test_a_shard_without_ratings_leaves_the_rating_tower_untouched():
    torch.manual_seed(0)
    model = build_model(MODEL, [10, 10], ["rating", "click"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = 16
    shard = Shard(np.random.default_rng(0).integers(0, 10, (n, 2)),
                  {"rating": np.full(n, np.nan, np.float32), "click": (np.arange(n) % 2).astype(np.float32)}, {})
    tasks = resolve_tasks(["rating", "click"], ["rating", "click"])
    weighting = build_weighting({"name": "equal"}, ["rating", "click"])
    report = train_epochs(model, weighting, make_optimizer(model, weighting, TRAIN), shard, tasks, TRAIN, 0,
                          torch.device("cpu"))
    assert report.label_counts == {"rating": 0, "click": n} and set(report.losses) == {"click"}
    owners = parameter_tasks(model)
    for name, value in model.state_dict().items():
        changed = not torch.equal(value, before[name])
        if owners[name] == "rating":
            assert not changed, name
        if owners[name] == "click":
            assert changed, name


def test_parameter_owners_follow_the_towers():
    model = build_model(MODEL, [10, 10], ["rating", "purchase"])
    owners = parameter_tasks(model)
    assert owners["towers.rating.0.weight"] == "rating"
    assert owners["towers.purchase.2.bias"] == "purchase"
    assert owners["embedding.tables.0.weight"] is None and owners["bottom.0.weight"] is None
    assert set(owners) == set(model.state_dict())


def test_resolve_tasks():
    assert [t.name for t in resolve_tasks(None, ["click", "rating"])] == ["rating", "click"]
    with pytest.raises(InputError, match="task 'rating' asked for, but the data has no 'rating' labels"):
        resolve_tasks(["rating"], ["click"])
    with pytest.raises(InputError, match="unknown task 'ctr'"):
        resolve_tasks(["ctr"], ["click"])
    scaled = resolve_tasks(["rating"], ["rating"], label_stats={"rating": {"mean": 3.0, "std": 2.0}})[0]
    assert scaled.to_prediction(torch.tensor([1.0])).item() == 5.0


def test_combine_weights_merchants_by_test_labels_and_skips_undefined():
    per_merchant = {"a": {"click": {"auc": 0.8}}, "b": {"click": {"auc": 0.5}}, "c": {"click": {"auc": math.nan}}}
    counts = {"a": {"click": 30}, "b": {"click": 10}, "c": {"click": 1000}}
    assert combine_merchants(per_merchant, counts)["click"]["auc"] == pytest.approx((30 * 0.8 + 10 * 0.5) / 40)


def test_the_standard_errors_match_the_spread_of_metrics_over_redrawn_test_splits():
    """Hanley-McNeil for an AUC (exact where scores are exponential, its derivation's model) and RMSE /
    sqrt(2n) against the spread of 1,000 simulated test splits."""
    rng = np.random.default_rng(0)
    positives, negatives = 40, 400

    def auc() -> float:  # Mann-Whitney: the positives' rank sum (continuous scores: no ties)
        ranks = np.r_[rng.exponential(3.0, positives), rng.exponential(1.0, negatives)].argsort().argsort() + 1
        return (ranks[:positives].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    aucs = [auc() for _ in range(1000)]
    assert auc_standard_error(float(np.mean(aucs)), positives, negatives) == pytest.approx(np.std(aucs), rel=0.1)
    rmses = [np.sqrt(np.mean(rng.normal(0.0, 0.9, 300) ** 2)) for _ in range(1000)]
    assert rmse_standard_error(0.9, 300) == pytest.approx(np.std(rmses), rel=0.1)
    assert math.isnan(auc_standard_error(0.7, 0, 100)) and math.isnan(rmse_standard_error(1.0, 0))
    # merchants combined like combine_merchants: weights = test labels; an undefined one is left out
    assert combined_standard_error({"a": (0.03, 100), "b": (0.01, 300), "c": (math.nan, 50)}) == pytest.approx(
        math.sqrt((100 * 0.03) ** 2 + (300 * 0.01) ** 2) / 400)


def test_the_paired_errors_match_the_spread_of_two_models_differences_over_redrawn_test_splits():
    """Two models that share most of their scores: DeLong's error of their AUC difference and the delta
    method's of their RMSE difference against the spread over 1,000 simulated test splits, and far
    below either model's own error (the same rows move both)."""
    rng = np.random.default_rng(1)
    positives, negatives = 60, 600

    def draw() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = np.r_[np.ones(positives), np.zeros(negatives)]
        shared = rng.normal(0.0, 1.0, len(y)) + 0.8 * y
        return y, shared + rng.normal(0.0, 0.3, len(y)), shared + 0.2 * y + rng.normal(0.0, 0.3, len(y))

    def auc(y: np.ndarray, s: np.ndarray) -> float:
        return binary_metrics(y, 1.0 / (1.0 + np.exp(-s)))["auc"]
    splits = [draw() for _ in range(1000)]
    differences = [auc(y, a) - auc(y, b) for y, a, b in splits]
    errors = [auc_difference_error(*split) for split in splits[:50]]  # one split's estimate is itself noisy
    assert np.mean(errors) == pytest.approx(np.std(differences), rel=0.15)
    y, a, b = splits[0]
    assert np.mean(errors) < 0.5 * auc_standard_error(auc(y, a), positives, negatives)
    assert auc_difference_error(y, a, a) == 0.0
    assert math.isnan(auc_difference_error(np.r_[1.0, 0.0, 0.0], np.r_[0.3, 0.2, 0.1], np.r_[0.1, 0.2, 0.3]))

    def rmse_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        truth = rng.normal(4.0, 1.0, 300)
        common = rng.normal(0.0, 0.8, 300)
        return truth, truth + common + rng.normal(0.0, 0.2, 300), truth + 1.1 * common
    pairs = [rmse_pair() for _ in range(1000)]
    rmse = lambda y, p: math.sqrt(np.mean((y - p) ** 2))  # noqa: E731
    spread = np.std([rmse(y, a) - rmse(y, b) for y, a, b in pairs])
    assert np.mean([rmse_difference_error(*pair) for pair in pairs[:50]]) == pytest.approx(spread, rel=0.15)


def test_metric_records_round_trip():
    nested = with_counts({"click": {"auc": 0.7, "logloss": 0.3}}, {"click": 12, "rating": 0})
    metrics, counts = split_counts(unflatten(flatten(nested)))
    assert metrics == {"click": {"auc": 0.7, "logloss": 0.3}} and counts == {"click": 12, "rating": 0}
    assert math.isnan(binary_metrics(np.ones(3), np.full(3, 0.5))["auc"])  # one class: undefined


def test_evaluate_reports_per_task_counts():
    model = build_model(MODEL, [10], ["rating", "click"])
    shard = Shard(np.zeros((4, 1), np.int64), {"rating": np.array([1, np.nan, 3, np.nan], np.float32),
                                               "click": np.array([0, 1, 0, 1], np.float32)}, {})
    metrics, counts = evaluate(model, shard, resolve_tasks(None, ["rating", "click"]), torch.device("cpu"))
    assert counts == {"rating": 2, "click": 4} and set(metrics["rating"]) == {"rmse", "mae"}


def _sparse_dense_pair(weighting_name: str, train: dict, n: int, proximal: float = 0.0):
    """The same model trained one epoch with the id tables' sparse gradients allowed and forced off."""
    import copy
    import tasks.training as training
    buckets = [50_000, 50_000]
    rng = np.random.default_rng(0)
    shard = Shard(np.stack([rng.integers(0, b, n) for b in buckets], 1),
                  {"click": (rng.random(n) < 0.3).astype(np.float32),
                   "rating": rng.integers(1, 6, n).astype(np.float32)}, {})
    tasks = resolve_tasks(["rating", "click"], ["rating", "click"])
    torch.manual_seed(0)
    start = build_model(MODEL, buckets, ["rating", "click"])
    trained = {}
    for allowed in (True, False):
        model = copy.deepcopy(start)
        weighting = build_weighting({"name": weighting_name}, ["rating", "click"])
        optimizer = make_optimizer(model, weighting, train)
        chosen = training.sparse_gradients_apply(optimizer, weighting, proximal) and allowed
        with training.sparse_table_gradients(model, chosen):
            model.train()
            outputs = model(torch.as_tensor(shard.features[:8]))
            sum(o.sum() for o in outputs.values()).backward()
            grad_is_sparse = model.embedding.tables[0].weight.grad.is_sparse
        model.zero_grad(set_to_none=True)
        original = training.sparse_gradients_apply
        training.sparse_gradients_apply = lambda *args: chosen
        try:
            train_epochs(model, weighting, optimizer, shard, tasks, train, 0, torch.device("cpu"), proximal)
        finally:
            training.sparse_gradients_apply = original
        trained[allowed] = (model, grad_is_sparse)
    return trained


def test_sparse_table_gradients_train_like_dense_ones_under_adagrad():
    train = {"optimizer": "adagrad", "lr": 0.05, "local_epochs": 1, "batch_size": 32, "embedding_l2": 30.0}
    one_step = _sparse_dense_pair("equal", train, 32)
    assert one_step[True][1] and not one_step[False][1]      # the tables' gradient is sparse only when allowed
    ten_steps = _sparse_dense_pair("equal", train, 320)
    for pair, atol in ((one_step, 1e-7), (ten_steps, 1e-5)):   # float rounding only (summation order)
        for a, b in zip(pair[True][0].parameters(), pair[False][0].parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=atol)


@pytest.mark.parametrize("weighting, train, proximal", [
    ("pcgrad", {"optimizer": "adagrad", "lr": 0.05}, 0.0),
    ("gradnorm", {"optimizer": "adagrad", "lr": 0.05}, 0.0),
    ("equal", {"optimizer": "adagrad", "lr": 0.05, "weight_decay": 1e-4}, 0.0),
    ("equal", {"optimizer": "adam", "lr": 0.01}, 0.0),
    ("equal", {"optimizer": "adagrad", "lr": 0.05}, 0.01),
])
def test_dense_gradients_where_sparse_ones_would_change_the_result(weighting, train, proximal):
    train = {**train, "local_epochs": 1, "batch_size": 32}
    pair = _sparse_dense_pair(weighting, train, 32, proximal)
    assert not pair[True][1]
