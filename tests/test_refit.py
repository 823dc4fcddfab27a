"""Refitting the kept model on the train and validation rows together: its per-id biases (refit_biases:
tasks/experiment.py, tasks/wide.py refit_statistics), then its embedding rows (refit_embeddings:
tasks/embedding_newton.py), and the references fitted on the same rows."""

import json

import numpy as np
import pytest
import torch

from core import protocol
from core.errors import InputError
from server_app.baselines import statistics_at
from tasks.embedding_newton import (BINARY_REFIT_PRIOR_SCALE, EMBEDDING_REFIT_STEPS, embedding_newton_settings,
                                    embedding_newton_update, refit_prior_scale)
from tasks.experiment import embedding_refit_steps, open_experiment
from tasks.registry import TASKS
from tasks.state import joint_state
from tasks.training import make_optimizer, task_labels
from tasks.wide import GLOBAL_BIAS, REFIT_STEPS, apply_newton, first_deep_round, refit_steps, train_round, wide_statistics

TABLES = "first_order.tables."


def trained_merchant(tiny_cfg, *overrides):
    """A tiny run's experiment, one merchant's train and validation shards, and a model whose biases took
    a Newton step on the train rows (the state refit_biases starts from)."""
    experiment = open_experiment(tiny_cfg("data.val_fraction=0.2", "select_round=best_val", *overrides))
    merchant = experiment.index.merchant_ids[0]
    train, val = experiment.shard(merchant, "train"), experiment.shard(merchant, "val")
    model, weighting = experiment.new_model(), experiment.new_weighting()
    apply_newton(model, wide_statistics(model, train, experiment.tasks, experiment.device), experiment.cfg["train"],
                 experiment.tasks)
    return experiment, train, val, model, weighting


def sums_of(part, model, weighting, shards, experiment):
    """statistics_at's sums of one refit part, as refit_biases / refit_embeddings take them."""
    statistics = statistics_at(model, weighting, shards, experiment)
    return lambda state: statistics(state, part)


def bias_sums(*args):
    return sums_of(protocol.REFIT_BIAS, *args)


def labelled_ids(shard, task, column):
    return set(shard.features[np.isfinite(task_labels(shard, [task])[task.name]), column].tolist())


def test_an_id_first_seen_in_validation_gets_a_bias_and_nothing_else_moves(tiny_cfg):
    experiment, train, val, model, weighting = trained_merchant(tiny_cfg)
    before = {k: v.clone() for k, v in joint_state(model, weighting).items()}
    after, steps = experiment.refit_biases(before, {}, bias_sums(model, weighting, [train, val], experiment))
    assert steps == REFIT_STEPS == experiment.bias_refit_steps
    newcomers = 0
    for name, value in after.items():
        if not name.startswith(TABLES):  # the deep part, the loss weighting and every task's global bias
            assert torch.equal(value, before[name]), name
            continue
        _, _, task_name, column, _ = name.split(".")
        task = next(t for t in experiment.tasks if t.name == task_name)
        seen_in_train, seen_in_val = labelled_ids(train, task, int(column)), labelled_ids(val, task, int(column))
        only_in_val = sorted(seen_in_val - seen_in_train)
        untouched = sorted(set(range(len(value))) - seen_in_train - seen_in_val)
        assert torch.all(before[name][only_in_val] == 0) and torch.all(value[only_in_val] != 0), name
        assert torch.equal(value[untouched], before[name][untouched]), name  # cold everywhere: still nothing
        newcomers += len(only_in_val)
    assert newcomers > 0  # the tiny data's latest rows do bring new users and items


def test_held_heads_and_runs_without_a_validation_choice_are_not_refitted(tiny_cfg):
    experiment, train, val, model, weighting = trained_merchant(tiny_cfg)
    before = joint_state(model, weighting)
    statistics = bias_sums(model, weighting, [train, val], experiment)
    after, _ = experiment.refit_biases(before, {"purchase": 1.2}, statistics)
    moved = {name.split(".")[2] for name in after if name.startswith(TABLES) and not torch.equal(after[name], before[name])}
    assert "purchase" not in moved and moved  # a head that predicts its prior keeps it
    for overrides in (["select_round=last"], ["refit_biases=false"], ["train.first_order_fit=sgd"]):
        experiment, train, val, model, weighting = trained_merchant(tiny_cfg, *overrides)
        before = joint_state(model, weighting)
        after, steps = experiment.refit_biases(before, {}, bias_sums(model, weighting, [train, val], experiment))
        assert steps == 0 and all(torch.equal(after[k], before[k]) for k in before), overrides


def test_the_refit_statistics_leave_the_global_biases_to_calibration(tiny_cfg):
    from tasks.wide import refit_statistics
    experiment, train, val, model, _ = trained_merchant(tiny_cfg)
    stats = refit_statistics(model, [train, val], experiment.tasks, experiment.device)
    assert stats and not any(name.startswith(GLOBAL_BIAS) for name in stats)
    both = wide_statistics(model, type(train).concat([train, val]), experiment.tasks, experiment.device)
    for name, (ids, g, h) in stats.items():
        np.testing.assert_array_equal(ids, both[name][0])
        np.testing.assert_allclose(g, both[name][1])


def test_an_id_first_seen_in_validation_gets_an_embedding_row_and_nothing_else_moves(tiny_cfg):
    # no id dropout: a dropped id's example reaches no row, and an id seen once might not move
    experiment, train, val, model, weighting = trained_merchant(tiny_cfg, "model.id_dropout=0")
    train_cfg = experiment.cfg["train"]  # a deep round too: at its zero-initialised heads no row has a gradient
    train_round(model, weighting, make_optimizer(model, weighting, train_cfg), train, experiment.tasks, train_cfg, 0,
                experiment.device, first_deep_round(train_cfg))
    before = {k: v.clone() for k, v in joint_state(model, weighting).items()}
    after, steps = experiment.refit_embeddings(
        before, sums_of(protocol.REFIT_EMBEDDING, model, weighting, [train, val], experiment))
    assert steps == EMBEDDING_REFIT_STEPS == experiment.embedding_refit_steps
    newcomers = 0
    for name, value in after.items():
        if not name.startswith("embedding.tables."):  # the biases, the deep part, the loss weighting
            assert torch.equal(value, before[name]), name
            continue
        column = int(name.split(".")[2])
        seen = [set().union(*(labelled_ids(shard, t, column) for t in experiment.tasks)) for shard in (train, val)]
        only_in_val = sorted(seen[1] - seen[0])
        untouched = sorted(set(range(len(value))) - seen[0] - seen[1])
        assert all(not torch.equal(value[i], before[name][i]) for i in only_in_val), name
        assert torch.equal(value[untouched], before[name][untouched]), name  # cold everywhere: as it was
        newcomers += len(only_in_val)
    assert newcomers > 0


@pytest.mark.parametrize("overrides, steps", [
    ([], EMBEDDING_REFIT_STEPS),
    (["refit_embeddings=true"], EMBEDDING_REFIT_STEPS),
    (["refit_embeddings=3"], 3),
    (["refit_embeddings=false"], 0),
    (["select_round=last"], 0),  # no validation choice: the validation rows stay held out
    (["train.first_order_fit=sgd"], 0),  # no per-row sums are sent
])
def test_refit_embeddings_steps_where_the_model_may_be_refitted(tiny_cfg, overrides, steps):
    assert embedding_refit_steps(tiny_cfg("data.val_fraction=0.2", "select_round=best_val", *overrides)) == steps


def test_without_a_rating_task_the_embedding_refit_takes_a_stronger_prior(tiny_cfg):
    """The same state and sums, the refit's step under BINARY_REFIT_PRIOR_SCALE x the prior without a
    rating task: shorter, and exactly the Newton step at that prior."""
    experiment, train, val, model, weighting = trained_merchant(tiny_cfg, "model.id_dropout=0", "tasks=[purchase,click]")
    train_cfg = experiment.cfg["train"]
    train_round(model, weighting, make_optimizer(model, weighting, train_cfg), train, experiment.tasks, train_cfg, 0,
                experiment.device, first_deep_round(train_cfg))
    before = joint_state(model, weighting)
    sums = sums_of(protocol.REFIT_EMBEDDING, model, weighting, [train, val], experiment)
    stats = sums(before)
    after, _ = experiment.refit_embeddings(before, lambda state: stats)
    prior, damping = embedding_newton_settings(train_cfg)
    params = {name: before[name].numpy() for name in stats}
    for scale, expected_equal in ((BINARY_REFIT_PRIOR_SCALE, True), (1.0, False)):
        expected = embedding_newton_update(params, stats, scale * prior, damping)
        matches = all(np.allclose(after[name].numpy(), expected[name], atol=1e-6) for name in stats)
        assert matches is expected_equal, scale
    assert refit_prior_scale([TASKS["rating"], TASKS["purchase"]]) == 1.0


def test_a_bad_refit_embeddings_value_is_one_clear_error(tiny_cfg):
    with pytest.raises(InputError, match="refit_embeddings='often'"):
        embedding_refit_steps(tiny_cfg("refit_embeddings=often", "select_round=best_val"))


@pytest.mark.parametrize("value, steps", [("auto", REFIT_STEPS), (True, REFIT_STEPS), (False, 0), (0, 0), (5, 5)])
def test_refit_biases_takes_auto_a_flag_or_a_count(value, steps):
    assert refit_steps(value) == steps


@pytest.mark.parametrize("value", ["often", -1, 1.5])
def test_a_bad_refit_biases_value_is_one_clear_error(value):
    with pytest.raises(InputError, match="refit_biases="):
        refit_steps(value)


def test_every_mode_refits_its_kept_model(tiny_runs, recorded_federated_run):
    for mode, run_dir in tiny_runs.items():
        doc = json.loads((run_dir / "metrics.json").read_text())
        assert (doc["refit_steps"], doc["embedding_refit_steps"]) == (REFIT_STEPS, EMBEDDING_REFIT_STEPS), mode
    run = recorded_federated_run("none")
    doc = json.loads((run.dir / "metrics.json").read_text())
    assert (doc["refit_steps"], doc["embedding_refit_steps"]) == (REFIT_STEPS, EMBEDDING_REFIT_STEPS)
    refit_type = f"query.{protocol.REFIT}"
    queries = [m for m in run.sent if m.metadata.message_type == refit_type]
    last_train = max(i for i, m in enumerate(run.sent) if m.metadata.message_type == "train")
    assert queries and all(run.sent.index(q) > last_train for q in queries)  # after the round is chosen
    nodes = {q.metadata.dst_node_id for q in queries}
    parts = [str(q.content.config_records[protocol.CONFIG][protocol.REFIT_PART]) for q in queries]
    # every evaluated node, once a step: the biases' steps, then the embeddings'
    assert parts == [protocol.REFIT_BIAS] * (REFIT_STEPS * len(nodes)) + \
        [protocol.REFIT_EMBEDDING] * (EMBEDDING_REFIT_STEPS * len(nodes))
    replies = [r for r in run.received if r.metadata.message_type == refit_type]
    assert len(replies) == len(queries)
    asked = {q.metadata.message_id: part for q, part in zip(queries, parts)}
    for reply in replies:  # per bias row sums only, no task's global level; or per embedding row
        records = reply.content.array_records
        if asked[reply.metadata.reply_to_message_id] == protocol.REFIT_BIAS:
            names = set(records[protocol.WIDE_STATS].keys())
            assert names and all(n.startswith(TABLES) for n in names) and protocol.EMBEDDING_STATS not in records
        else:
            names = set(records[protocol.EMBEDDING_STATS].keys())
            assert names and all(n.startswith("embedding.tables.") for n in names) and protocol.WIDE_STATS not in records
