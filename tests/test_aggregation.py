"""The multi-task FedAvg math, checked against weighted means computed by hand."""

import numpy as np
import pytest
import torch

from server_app.aggregation import ClientUpdate, RowTotals, aggregate_multitask

OWNERS = {"shared": None, "towers.rating.w": "rating", "towers.click.w": "click"}


def arrays(shared, rating, click):
    return {"shared": np.array(shared, np.float32), "towers.rating.w": np.array(rating, np.float32),
            "towers.click.w": np.array(click, np.float32)}


CURRENT = arrays([0.0, 0.0], [9.0], [9.0])


def test_shared_parameters_are_averaged_by_examples():
    a = ClientUpdate(arrays([1.0, 2.0], [0.0], [0.0]), examples=30, label_counts={"rating": 10, "click": 30})
    b = ClientUpdate(arrays([4.0, 8.0], [0.0], [0.0]), examples=10, label_counts={"rating": 10, "click": 10})
    out = aggregate_multitask(CURRENT, [a, b], OWNERS)
    np.testing.assert_allclose(out["shared"], [(30 * 1 + 10 * 4) / 40, (30 * 2 + 10 * 8) / 40])


def test_a_client_without_ratings_never_dilutes_the_rating_head():
    a = ClientUpdate(arrays([0, 0], [2.0], [1.0]), examples=100, label_counts={"rating": 20, "click": 100})
    b = ClientUpdate(arrays([0, 0], [5.0], [3.0]), examples=50, label_counts={"rating": 60, "click": 50})
    no_ratings = ClientUpdate(arrays([0, 0], [-100.0], [7.0]), examples=300, label_counts={"click": 300})
    out = aggregate_multitask(CURRENT, [a, b, no_ratings], OWNERS)
    np.testing.assert_allclose(out["towers.rating.w"], [(20 * 2 + 60 * 5) / 80])  # a and b only
    np.testing.assert_allclose(out["towers.click.w"], [(100 * 1 + 50 * 3 + 300 * 7) / 450])
    # Same result as if the client without ratings had not taken part at all, for the rating head.
    alone = aggregate_multitask(CURRENT, [a, b], OWNERS)
    np.testing.assert_allclose(out["towers.rating.w"], alone["towers.rating.w"])


def test_a_task_no_client_trained_keeps_its_global_value():
    a = ClientUpdate(arrays([1, 1], [5.0], [5.0]), examples=10, label_counts={"click": 10})
    out = aggregate_multitask(CURRENT, [a], OWNERS)
    np.testing.assert_allclose(out["towers.rating.w"], CURRENT["towers.rating.w"])
    np.testing.assert_allclose(out["towers.click.w"], [5.0])


def test_a_client_with_no_labelled_examples_carries_no_weight():
    a = ClientUpdate(arrays([2, 2], [1.0], [1.0]), examples=10, label_counts={"rating": 5, "click": 10})
    empty = ClientUpdate(arrays([-50, -50], [-50.0], [-50.0]), examples=0, label_counts={})
    out = aggregate_multitask(CURRENT, [a, empty], OWNERS)
    np.testing.assert_allclose(out["shared"], [2, 2])


def test_embeddings_are_plain_fedavg():
    current = {"emb": np.zeros((1, 1), np.float32)}
    a = ClientUpdate({"emb": np.array([[1.0]], np.float32)}, examples=1)
    b = ClientUpdate({"emb": np.array([[4.0]], np.float32)}, examples=2)
    np.testing.assert_allclose(aggregate_multitask(current, [a, b], {"emb": None})["emb"], [[3.0]])


def test_unknown_parameter_is_an_error():
    with pytest.raises(KeyError, match="no owner"):
        aggregate_multitask({"x": np.zeros(1)}, [], {})


# Row-wise aggregation of id-indexed tables (embeddings, per-id biases).
from server_app.aggregation import aggregate, aggregate_rows  # noqa: E402

TABLE = np.zeros((4, 2), np.float32)


def rows(ids, counts):
    return np.array(ids, np.int64), np.array(counts, np.float64)


def test_a_row_is_averaged_only_over_the_clients_that_trained_it_by_count():
    a = ClientUpdate({"t": np.array([[1, 1], [2, 2], [0, 0], [0, 0]], np.float32)}, 10, row_counts={"t": rows([0, 1], [3, 1])})
    b = ClientUpdate({"t": np.array([[5, 5], [0, 0], [0, 0], [0, 0]], np.float32)}, 99, row_counts={"t": rows([0], [1])})
    out = aggregate_rows(TABLE, [a, b], "t")
    np.testing.assert_allclose(out[0], [(3 * 1 + 1 * 5) / 4] * 2)  # both trained row 0
    np.testing.assert_allclose(out[1], [2, 2])                      # only a trained row 1: no dilution by b
    np.testing.assert_array_equal(out[2:], TABLE[2:])               # untouched rows keep their value


def test_untouched_rows_keep_their_value_even_if_a_client_changed_them():
    current = np.arange(8, dtype=np.float32).reshape(4, 2)
    drifted = ClientUpdate({"t": current + 100}, 10, row_counts={"t": rows([3], [2])})
    out = aggregate_rows(current, [drifted], "t")
    np.testing.assert_array_equal(out[:3], current[:3])
    np.testing.assert_allclose(out[3], current[3] + 100)


def test_rows_equal_dense_fedavg_when_every_client_trains_every_row_by_its_examples():
    rng = np.random.default_rng(0)
    current = {"t": rng.normal(size=(5, 3)).astype(np.float32), "shared": np.zeros(2, np.float32)}
    updates = []
    for examples in (7, 3, 12):
        arrays = {"t": rng.normal(size=(5, 3)).astype(np.float32), "shared": rng.normal(size=2).astype(np.float32)}
        updates.append(ClientUpdate(arrays, examples, row_counts={"t": rows(range(5), [examples] * 5)}))
    owners = {"t": None, "shared": None}
    row_wise = aggregate(current, updates, owners, ["t"])
    dense = aggregate_multitask(current, updates, owners)
    for name in current:
        np.testing.assert_allclose(row_wise[name], dense[name], rtol=1e-5, atol=1e-6)


def adagrad_like_updates(counts_per_client, gradients):
    """Each client's change to row 0 as fresh Adagrad makes it: sqrt(count) steps' worth of its mean gradient."""
    return [ClientUpdate({"t": np.array([np.sqrt(c) * np.asarray(g, np.float32), [0, 0], [0, 0], [0, 0]], np.float32)},
                         int(c), row_counts={"t": rows([0], [c])}) for c, g in zip(counts_per_client, gradients)]


def test_sqrt_normalisation_weighs_clients_by_count_as_pooled_training_does():
    g_big, g_small = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    updates = adagrad_like_updates([16, 4], [g_big, g_small])
    plain = aggregate_rows(TABLE, updates, "t")[0]
    normalised = aggregate_rows(TABLE, updates, "t", progress_power=0.5)[0]
    # the plain mean weighs each client's gradient by count ** 1.5 (64 : 8); sqrt brings it to count (16 : 4)
    np.testing.assert_allclose(plain[0] / plain[1], 64 / 8, rtol=1e-6)
    np.testing.assert_allclose(normalised[0] / normalised[1], 16 / 4, rtol=1e-6)
    # and the step keeps the count-weighted mean progress, (16 * 4 + 4 * 2) / 20 = 3.6 gradients long
    np.testing.assert_allclose(normalised, 3.6 * (16 * g_big + 4 * g_small) / 20, rtol=1e-6)


def test_row_normalisation_leaves_a_single_client_alone_and_ignores_the_count_scale():
    updates = adagrad_like_updates([9, 3], [[1.0, 2.0], [-1.0, 0.5]])
    alone = aggregate_rows(TABLE, updates[:1], "t", progress_power=0.5)
    np.testing.assert_allclose(alone[0], updates[0].arrays["t"][0], rtol=1e-6)
    # counts per epoch or per two local epochs: the same weights
    doubled = [ClientUpdate(u.arrays, u.examples, row_counts={"t": rows([0], [2 * u.row_counts["t"][1][0]])})
               for u in updates]
    for power in (0.5, 1.0):
        np.testing.assert_allclose(aggregate_rows(TABLE, doubled, "t", power), aggregate_rows(TABLE, updates, "t", power),
                                   rtol=1e-6)


def test_row_normalization_auto_is_sqrt_only_under_adagrad_with_fresh_state():
    from server_app.aggregation import row_normalization_power
    from core.errors import InputError
    assert row_normalization_power({"row_normalization": "auto"}, {"optimizer": "adagrad"}) == 0.5
    assert row_normalization_power({"row_normalization": "auto"},
                                   {"optimizer": "adagrad", "keep_optimizer_state": True}) == 0.0
    assert row_normalization_power({"row_normalization": "auto"}, {"optimizer": "adam"}) == 0.0
    assert row_normalization_power({"row_normalization": "linear"}, {"optimizer": "adagrad"}) == 1.0
    with pytest.raises(InputError, match="federation.row_normalization must be auto, none, sqrt, linear, got 'half'"):
        row_normalization_power({"row_normalization": "half"}, {"optimizer": "adagrad"})


def test_a_client_without_a_tasks_labels_sends_no_rows_for_its_table():
    from data.shards import Shard
    from tasks.registry import resolve_tasks
    from tasks.training import trained_rows
    shard = Shard(np.array([[0, 5], [1, 5], [1, 6]], np.int64),
                  {"click": np.array([1, 0, np.nan], np.float32), "rating": np.full(3, np.nan, np.float32)}, {})
    tasks = resolve_tasks(["rating", "click"], ["rating", "click"])
    tables = {"emb0": (0, None), "emb1": (1, None), "click1": (1, "click"), "rating1": (1, "rating")}
    got = {k: (ids.tolist(), counts.tolist()) for k, (ids, counts) in trained_rows(shard, tasks, tables).items()}
    assert got == {"emb0": ([0, 1], [1, 1]), "emb1": ([5], [2]), "click1": ([5], [2]), "rating1": ([], [])}


def test_row_totals_count_each_merchant_once_and_restore_from_their_state():
    totals = RowTotals({"emb0": 4})
    totals.add("a", {"emb0": (np.array([0, 2]), np.array([3, 1]))})
    totals.add("a", {"emb0": (np.array([0, 2]), np.array([3, 1]))})  # its shard again, next round
    totals.add("b", {"emb0": (np.array([2, 3]), np.array([2, 5]))})
    totals.add("c", {})  # a reply without row counts (dense tables) is not counted
    np.testing.assert_array_equal(totals.totals["emb0"], [3, 0, 3, 5])
    assert totals.counted == {"a", "b"}
    again = RowTotals({"emb0": 4})
    again.restore(totals.state())
    np.testing.assert_array_equal(again.totals["emb0"], totals.totals["emb0"])
    assert again.counted == totals.counted


def test_with_row_totals_the_merchants_row_priors_add_up_to_the_pooled_prior():
    """Per row, sum over merchants of (its lookups there x the per-lookup weight) is what the pooled
    trainer applies (1 per row); counted on each shard alone a row shared by k merchants gets k."""
    from data.shards import Shard
    from tasks.registry import resolve_tasks
    from tasks.training import inverse_row_counts, trained_rows
    tasks = resolve_tasks(["click"], ["click"])
    features = np.array([[0, 5], [0, 6], [1, 5], [2, 5], [2, 7], [3, 6]], np.int64)
    clicks = np.array([1, 0, 0, 1, 1, 0], np.float32)
    parts = [slice(0, 2), slice(2, 5), slice(5, 6)]
    shards = [Shard(features[p], {"click": clicks[p]}, {}) for p in parts]
    pooled = Shard(features, {"click": clicks}, {})
    buckets = [4, 8]
    tables = {"embedding.tables.0.weight": (0, None), "embedding.tables.1.weight": (1, None)}
    totals = RowTotals({name: buckets[column] for name, (column, _) in tables.items()})
    for k, shard in enumerate(shards):
        totals.add(str(k), trained_rows(shard, tasks, tables))
    by_column = {tables[name][0]: total for name, total in totals.totals.items()}
    cpu = torch.device("cpu")

    def prior_mass(weights_of_shard):
        mass = [np.zeros(n) for n in buckets]
        for shard in shards:
            weights = weights_of_shard(shard)
            for j in range(len(buckets)):
                np.add.at(mass[j], shard.features[:, j], weights[j].numpy()[shard.features[:, j]])
        return mass

    pooled_mass = [np.zeros(n) for n in buckets]
    for j, w in enumerate(inverse_row_counts(pooled, tasks, buckets, cpu)):
        np.add.at(pooled_mass[j], features[:, j], w.numpy()[features[:, j]])
    shared = prior_mass(lambda shard: inverse_row_counts(shard, tasks, buckets, cpu, by_column))
    alone = prior_mass(lambda shard: inverse_row_counts(shard, tasks, buckets, cpu))
    for j in range(len(buckets)):
        np.testing.assert_allclose(shared[j], pooled_mass[j], rtol=1e-6)
    np.testing.assert_allclose(pooled_mass[1][[5, 6, 7]], [1, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(alone[1][[5, 6, 7]], [2, 2, 1], rtol=1e-6)  # item 5 in two shards, 6 in two
