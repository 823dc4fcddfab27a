"""The embedding rows' Newton step on summed statistics (tasks/embedding_newton.py)."""

import json

import numpy as np
import pytest
import torch

from core.config import compose_config, to_plain
from data.shards import Shard
from server_app.replies import statistics_problem
from tasks.embedding_newton import (embedding_newton, embedding_newton_settings, embedding_newton_update,
                                    embedding_statistics, pack_statistics, refit_embedding_statistics,
                                    refit_embeddings, unpack_statistics)
from tasks.experiment import open_experiment, resolved_training
from tasks.models import build_model
from tasks.registry import TASKS, resolve_tasks
from tasks.wide import sum_statistics
from tests.conftest import TINY

CPU = torch.device("cpu")
TABLE = "embedding.tables.0.weight"


def test_one_undamped_step_on_a_quadratic_loss_lands_on_the_ridge_solution():
    rng = np.random.default_rng(0)
    a, y, lam = rng.normal(size=(30, 4)), rng.normal(size=30), 3.0  # loss: sum (y - a.e)^2 / 2 + lam |e|^2 / 2
    start = rng.normal(size=(2, 4))
    g = ((y - a @ start[1]) @ a)[None]  # row 1's statistics at its current value
    h = (a.T @ a)[None]
    new = embedding_newton_update({TABLE: start}, {TABLE: (np.array([1]), g, h)}, lam, 1.0)[TABLE]
    np.testing.assert_allclose(new[1], np.linalg.solve(a.T @ a + lam * np.eye(4), a.T @ y), rtol=1e-6)
    np.testing.assert_array_equal(new[0], start[0])  # a row without statistics keeps its value


def test_a_row_no_labelled_row_reaches_is_only_shrunk_by_its_prior():
    start = np.ones((1, 3))
    new = embedding_newton_update({TABLE: start}, {TABLE: (np.array([0]), np.zeros((1, 3)), np.zeros((1, 3, 3)))},
                                  4.0, 0.5)[TABLE]
    np.testing.assert_allclose(new, 0.5 * start)
    zero_prior = embedding_newton_update({TABLE: start}, {TABLE: (np.array([0]), np.zeros((1, 3)),
                                                                  np.zeros((1, 3, 3)))}, 0.0, 1.0)[TABLE]
    np.testing.assert_allclose(zero_prior, start)  # solvable, and nothing moves it


def binary_setup(seed=0, n=60, id_dropout=0.0):
    rng = np.random.default_rng(seed)
    features = rng.integers(0, 8, (n, 2))
    labels = {"click": (rng.random(n) < 0.4).astype(np.float32),
              "purchase": np.where(rng.random(n) < 0.7, rng.random(n) < 0.2, np.nan).astype(np.float32)}
    tasks = resolve_tasks(["purchase", "click"], ["purchase", "click"],
                          label_stats={"purchase": {"mean": 0.2}, "click": {"mean": 0.4}})
    torch.manual_seed(seed)
    model = build_model({**to_plain(compose_config([]))["model"], "embedding_init_std": 0.3, "dropout": 0.0,
                         "id_dropout": id_dropout},
                        [8, 8], ["purchase", "click"])
    with torch.no_grad():  # a trained-looking model: towers that read their input
        for name, p in model.named_parameters():
            if name.startswith("towers"):
                p.normal_(0, 0.3)
    return model, tasks, Shard(features, labels, {})


@pytest.mark.parametrize("id_dropout", [0.0, [0.5, 0.3]])
def test_the_gradient_sums_are_minus_the_summed_losses_gradient_in_each_row(id_dropout):
    """With id dropout, the sums are those of the loss training minimises: ids dropped as in training
    (the same draw, replayed by reseeding), a dropped id's row getting nothing from that example."""
    model, tasks, shard = binary_setup(id_dropout=id_dropout)
    torch.manual_seed(7)
    stats = embedding_statistics(model, shard, tasks, CPU)
    model.zero_grad()
    torch.manual_seed(7)
    features = torch.as_tensor(shard.features)
    vectors = model.embedding.vectors(features)  # eval mode: ids dropped only where asked, next line
    if model.embedding.drops_ids:
        vectors = model.embedding.drop_ids(vectors)
    outputs = model.link(model.raw_from_vectors(features, vectors))
    loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(
        outputs[t.name][mask], torch.as_tensor(shard.labels[t.label])[mask], reduction="sum")
        for t in tasks for mask in [torch.isfinite(torch.as_tensor(shard.labels[t.label]))])
    loss.backward()
    for j in range(2):
        ids, g, h = stats[f"embedding.tables.{j}.weight"]
        np.testing.assert_array_equal(ids, np.unique(shard.features[:, j]))
        grad = model.embedding.tables[j].weight.grad.numpy()
        np.testing.assert_allclose(g, -grad[ids], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(h, np.transpose(h, (0, 2, 1)))  # curvature: symmetric ...
        assert np.all(np.linalg.eigvalsh(h) > -1e-9)                # ... and positive semi-definite


def test_the_refits_sums_drop_no_id_whatever_the_models_id_dropout():
    """The refit fits rows for test rows whose ids are present: its sums are those of the model with
    every id in, on every draw, while the round's step keeps training's draw (the test above)."""
    dropping, tasks, shard = binary_setup(id_dropout=[0.5, 0.3])
    keeping, _, _ = binary_setup(id_dropout=0.0)  # the same weights: the same seed
    expected = embedding_statistics(keeping, shard, tasks, CPU)
    for draw in (1, 2):
        torch.manual_seed(draw)
        refit = refit_embedding_statistics(dropping, [shard], tasks, CPU)
        for name in expected:
            for a, b in zip(refit[name], expected[name]):
                np.testing.assert_array_equal(a, b)
    torch.manual_seed(1)
    trained = embedding_statistics(dropping, shard, tasks, CPU)
    assert not np.allclose(trained[TABLE][1], expected[TABLE][1])  # the round's sums do drop ids


def test_the_trainers_own_step_lowers_its_training_loss():
    model, tasks, shard = binary_setup(seed=3, n=400)
    features = torch.as_tensor(shard.features)

    def loss() -> float:
        with torch.no_grad():
            outputs = model(features)
            return sum(float(torch.nn.functional.binary_cross_entropy_with_logits(
                outputs[t.name][mask], torch.as_tensor(shard.labels[t.label])[mask], reduction="sum"))
                for t in tasks for mask in [torch.isfinite(torch.as_tensor(shard.labels[t.label]))])

    losses = [loss()]
    for _ in range(3):
        refit_embeddings(model, shard, tasks, {"embedding_l2": 1.0, "newton_damping": 0.7}, CPU)
        losses.append(loss())
    assert losses[0] > losses[1] > losses[2] > losses[3], losses


def test_statistics_summed_over_merchants_equal_the_pooled_statistics():
    model, tasks, shard = binary_setup(seed=1)
    pooled = embedding_statistics(model, shard, tasks, CPU)
    parts = [embedding_statistics(model, Shard(shard.features[s], {k: v[s] for k, v in shard.labels.items()}, {}),
                                  tasks, CPU) for s in (slice(0, 17), slice(17, 41), slice(41, 60))]
    summed = sum_statistics(parts)
    assert set(summed) == set(pooled)
    for name in pooled:
        for a, b in zip(summed[name], pooled[name]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)  # float32 forward passes


def test_the_wire_form_round_trips_and_a_malformed_one_is_refused():
    model, tasks, shard = binary_setup(seed=2)
    stats = embedding_statistics(model, shard, tasks, CPU)
    back = unpack_statistics(pack_statistics(stats))
    for name in stats:
        for a, b in zip(back[name], stats[name]):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="not \\[rows, 1 \\+ d \\+ d \\* d\\]"):
        unpack_statistics({TABLE: np.zeros((3, 8))})


def test_statistics_that_do_not_fit_the_global_table_are_named():
    table = {TABLE: np.zeros((5, 2), np.float32)}
    good = (np.array([0, 4]), np.zeros((2, 2)), np.zeros((2, 2, 2)))
    assert statistics_problem(table, {TABLE: good}, "embedding") is None
    assert "rows outside" in statistics_problem(table, {TABLE: (np.array([5]), good[1][:1], good[2][:1])}, "embedding")
    assert "do not match its rows" in statistics_problem(
        table, {TABLE: (good[0], np.zeros((2, 3)), np.zeros((2, 3, 3)))}, "embedding")
    assert "not finite" in statistics_problem(table, {TABLE: (good[0], np.full((2, 2), np.nan), good[2])}, "embedding")


@pytest.mark.parametrize("tasks, fit, drops_ids, keeps_best, on", [
    (["purchase", "click"], "newton", False, True, True),
    (["rating", "purchase", "click"], "newton", False, True, True),
    (["purchase", "click"], "sgd", False, True, False),  # the privacy options' setting: no per-row statistics
    (["purchase", "click"], "newton", True, True, False),  # model.id_dropout trains the model not to lean on ids
    (["rating", "purchase", "click"], "newton", False, False, False),  # the last round kept: past the peak
])
def test_auto_refits_embeddings_where_statistics_are_sent_no_id_is_dropped_and_the_best_round_kept(
        tasks, fit, drops_ids, keeps_best, on):
    train = resolved_training({"embedding_newton": "auto", "first_order_fit": fit}, [TASKS[t] for t in tasks],
                              drops_ids, keeps_best)
    assert embedding_newton(train) is on
    assert resolved_training({"embedding_newton": True, "first_order_fit": fit}, [TASKS["rating"]])["embedding_newton"]


def test_a_setting_that_is_not_a_boolean_is_refused():
    with pytest.raises(Exception, match="train.embedding_newton must be auto, true or false, got 'yes'"):
        embedding_newton({"embedding_newton": "yes"})


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_the_federated_step_is_the_pooled_step_at_the_rounds_average(tmp_path):
    """Two real one-round simulations alike but for train.embedding_newton (no bias-only round: the
    round trains the deep part and, in the second, then queries the merchants' sums): the second's
    embedding rows are the first's moved by one step on every merchant's train rows at the first's
    model, and nothing else differs."""
    from launch.cli import run as cli_run

    base = [*TINY, "tasks=[purchase,click]", "train.keep_optimizer_state=false", "train.average_decay=0",
            "train.wide_rounds=0", "federation.rounds=1", "ranking.enabled=false"]
    saved = {}
    for on in ("false", "true"):
        cli_run(compose_config([*base, f"train.embedding_newton={on}"]), tmp_path / on)
        saved[on] = torch.load(tmp_path / on / "model.pt", weights_only=False)
        assert json.loads((tmp_path / on / "metrics.json").read_text())["failures"] == []
    experiment = open_experiment(saved["false"]["config"])
    model = experiment.new_model()
    model.load_state_dict({k: v for k, v in saved["false"]["state"].items() if k in model.state_dict()})
    stats = sum_statistics([embedding_statistics(model, experiment.shard(m, "train"), experiment.tasks, CPU)
                            for m in experiment.index.merchant_ids])
    expected = embedding_newton_update({name: saved["false"]["state"][name].numpy() for name in stats}, stats,
                                       *embedding_newton_settings(experiment.cfg["train"]))
    moved = 0.0
    for name, value in saved["true"]["state"].items():
        want = expected.get(name, saved["false"]["state"][name].numpy())
        np.testing.assert_allclose(value.numpy(), want, rtol=1e-4, atol=1e-6, err_msg=name)
        moved += float(np.abs(want - saved["false"]["state"][name].numpy()).sum())
    assert moved > 1e-3  # the step did move the rows


@pytest.mark.parametrize("overrides, on", [
    (["data.val_fraction=0.2"], True),
    (["data.val_fraction=0.2", "tasks=[purchase,click]"], True),
    (["data.val_fraction=0.2", "model.id_dropout=0.1"], False),
    (["data.val_fraction=0.2", "select_round=last"], False),
    (["data.val_fraction=0.2", "train.first_order_fit=sgd"], False),
    ([], False),  # TINY is the synthetic default's shape: no validation split
])
def test_the_experiment_every_side_builds_resolves_it_from_its_tasks_and_id_dropout(tiny_cfg, overrides, on):
    assert open_experiment(tiny_cfg(*overrides)).cfg["train"]["embedding_newton"] is on
