import math

import numpy as np
import pytest
import torch

from data.shards import Shard
from tasks.models import build_model
from tasks.ranking import RankingConfig, model_score_fn, ranking_metrics
from tasks.registry import TASKS

MERCHANT, USER, ITEM, EXTRA = range(4)  # feature columns of the shards below
RATING, CLICK = TASKS["rating"], TASKS["click"]
MODEL = {"name": "shared_bottom", "embedding_dim": 4, "expert_dims": [8], "tower_dims": [4], "dropout": 0.0}


def shard(rows: list[tuple[int, int]], labels: dict[str, list[float]], extra_from: int = 0) -> Shard:
    """Rows (user, item) of merchant 3, with a distinct extra feature per row."""
    users, items = np.array(rows, np.int64).reshape(-1, 2).T
    n = len(users)
    features = np.stack([np.full(n, 3), users, items, extra_from + np.arange(n)], axis=1).astype(np.int64)
    return Shard(features, {k: np.asarray(v, np.float32) for k, v in labels.items()}, {})


def platform(n_users: int = 200, n_items: int = 400, train_per_user: int = 5, seed: int = 0
             ) -> tuple[Shard, Shard]:
    """Each user: a few train rows, one relevant test row (rating 5) and one irrelevant one (rating 2)."""
    rng = np.random.default_rng(seed)
    train, test, test_ratings = [], [], []
    for u in range(n_users):
        items = rng.choice(n_items, train_per_user + 2, replace=False)
        train += [(u, int(i)) for i in items[:train_per_user]]
        test += [(u, int(items[-2])), (u, int(items[-1]))]
        test_ratings += [5.0, 2.0]
    train_shard = shard(train, {"rating": rng.integers(1, 6, len(train)).astype(float)})
    return train_shard, shard(test, {"rating": test_ratings}, extra_from=10_000)


def recording(score_fn):
    """score_fn that also keeps every row it was asked about, and the size of each call."""
    calls: list[np.ndarray] = []

    def wrapped(features: np.ndarray) -> np.ndarray:
        calls.append(features.copy())
        return score_fn(features)
    return wrapped, calls


def run(score_fn, train, test, task=RATING, **cfg):
    return ranking_metrics(score_fn, train, test, task, USER, ITEM, RankingConfig(**cfg))


def test_an_oracle_scorer_is_perfect_in_both_protocols():
    train, test = platform()
    relevant = {(int(u), int(i)) for (u, i), r in zip(test.features[:, [USER, ITEM]], test.labels["rating"]) if r >= 4}
    oracle = lambda x: np.array([(int(u), int(i)) in relevant for u, i in x[:, [USER, ITEM]]], float)
    metrics, n = run(oracle, train, test)
    assert n == 200
    assert metrics == {"hr@10": 1.0, "ndcg@10": 1.0, "hr@10_full": 1.0, "ndcg@10_full": 1.0}


@pytest.mark.parametrize("r", [0, 1, 5, 9, 10, 42])
def test_a_positive_ranked_at_r_scores_one_over_log2_r_plus_2(r):
    # Items 0..99 from other users; user 7 likes item r and already touched items 500 and 501, which
    # the scorer loves: they must be filtered out, or the positive would drop to rank r + 2.
    train = shard([(1, i) for i in range(100)] + [(7, 500)], {"rating": [3.0] * 101})
    test = shard([(7, r), (7, 501)], {"rating": [5.0, 1.0]})
    score = lambda x: np.where(x[:, ITEM] >= 500, 1e6, -x[:, ITEM].astype(float))
    # More negatives asked for than exist: the sampled protocol then uses all of them.
    metrics, n = run(score, train, test, n_negatives=1000)
    assert n == 1
    for suffix in ("", "_full"):
        assert metrics[f"hr@10{suffix}"] == float(r < 10)
        assert metrics[f"ndcg@10{suffix}"] == pytest.approx(1 / math.log2(r + 2) if r < 10 else 0.0)


def test_a_constant_scorer_sits_at_chance_not_at_the_top():
    train, test = platform()
    metrics, _ = run(lambda x: np.zeros(len(x)), train, test)
    assert 0.05 <= metrics["hr@10"] <= 0.15
    assert metrics["hr@10"] == pytest.approx(10 / 100)  # ties are averaged exactly
    n_items = len(np.unique(np.concatenate([train.features, test.features])[:, ITEM]))
    assert metrics["hr@10_full"] == pytest.approx(10 / (n_items - 6))  # each user touched 6 other items
    nan_metrics, _ = run(lambda x: np.full(len(x), np.nan), train, test)
    assert nan_metrics == metrics


def test_candidates_never_include_items_the_user_touched():
    train, test = platform()
    touched: dict[int, set[int]] = {}
    for u, i in np.concatenate([train.features, test.features])[:, [USER, ITEM]]:
        touched.setdefault(int(u), set()).add(int(i))
    target = {int(u): int(i) for (u, i), r in zip(test.features[:, [USER, ITEM]], test.labels["rating"]) if r >= 4}
    score, calls = recording(lambda x: np.random.default_rng(0).random(len(x)))
    run(score, train, test)
    rows = np.concatenate(calls)
    for u, i in rows[:, [USER, ITEM]]:
        assert int(i) == target[int(u)] or int(i) not in touched[int(u)]
    n_items = len(np.unique(np.concatenate([train.features, test.features])[:, ITEM]))
    assert len(rows) == 200 * (1 + 99) + 200 * (n_items - 7 + 1)  # sampled + full; 7 items touched per user


def test_candidate_rows_keep_the_test_row_except_the_item():
    train, test = platform(n_users=20)
    score, calls = recording(lambda x: np.zeros(len(x)))
    run(score, train, test)
    by_user = {int(row[USER]): row for row, r in zip(test.features, test.labels["rating"]) if r >= 4}
    for row in np.concatenate(calls):
        expected = by_user[int(row[USER])]
        assert row[MERCHANT] == expected[MERCHANT] and row[EXTRA] == expected[EXTRA]


def test_no_positives_gives_nothing():
    train, test = platform(n_users=5)
    low = shard([tuple(x) for x in test.features[:, [USER, ITEM]]], {"rating": [3.0, np.nan] * 5})
    assert run(lambda x: np.zeros(len(x)), train, low) == ({}, 0)
    unrated = shard([tuple(x) for x in test.features[:, [USER, ITEM]]], {"click": [1.0, 0.0] * 5})
    assert run(lambda x: np.zeros(len(x)), train, unrated) == ({}, 0)


def test_binary_relevance_is_label_one():
    train = shard([(u, i) for u in range(4) for i in range(30)], {"click": [0.0] * 120})
    test = shard([(0, 40), (1, 41), (2, 42), (3, 43), (0, 44)], {"click": [1.0, 0.0, np.nan, 1.0, 0.5]})
    oracle = lambda x: np.array([(int(u), int(i)) in {(0, 40), (3, 43)} for u, i in x[:, [USER, ITEM]]], float)
    metrics, n = run(oracle, train, test, task=CLICK)
    assert n == 2 and metrics["hr@10"] == 1.0 and metrics["ndcg@10_full"] == 1.0
    assert run(oracle, train, test, task=RATING) == ({}, 0)  # a click label is not a rating


def test_the_seed_fixes_the_sampled_negatives():
    train, test = platform()
    score = lambda x: ((x[:, ITEM] * 2654435761) % 1000).astype(float)
    first, _ = run(score, train, test, seed=1)
    assert run(score, train, test, seed=1)[0] == first
    other, _ = run(score, train, test, seed=2)
    assert other["ndcg@10"] != first["ndcg@10"]
    assert other["ndcg@10_full"] == first["ndcg@10_full"]  # the full protocol samples nothing


def test_calls_are_chunked_and_chunking_does_not_change_the_result():
    train, test = platform(n_users=100, n_items=300)
    score = lambda x: ((x[:, ITEM] * 2654435761 + x[:, USER]) % 997).astype(float)
    small, calls = recording(score)
    chunked, _ = run(small, train, test, batch_rows=256)
    assert max(len(c) for c in calls) <= 256
    assert chunked == pytest.approx(run(score, train, test, batch_rows=100_000)[0])


def test_a_real_model_wires_through():
    torch.manual_seed(0)
    train, test = platform(n_users=30, n_items=50)
    model = build_model(MODEL, [4, 30, 50, 10_100], ["rating"])
    metrics, n = run(model_score_fn(model, RATING, torch.device("cpu")), train, test)
    assert n == 30 and set(metrics) == {"hr@10", "ndcg@10", "hr@10_full", "ndcg@10_full"}
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values())
