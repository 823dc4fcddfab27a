"""The multi-task FedAvg math, checked against weighted means computed by hand."""

import numpy as np
import pytest

from server_app.aggregation import ClientUpdate, aggregate_multitask

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
