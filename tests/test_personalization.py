"""personalization=local_bias|local_heads (tasks/personalization.py): each merchant's own offset per
task, or its own heads."""

import numpy as np
import pytest

from core.errors import InputError
from tasks.experiment import open_experiment
from tasks.personalization import fit_offset, local_offsets, personalization_of, shifted
from tasks.ranking import evaluate_merchant
from tasks.registry import resolve_tasks
from tasks.training import predict

TASKS = {t.name: t for t in resolve_tasks(["rating", "purchase"], ["rating", "purchase"])}
RNG = np.random.default_rng(0)


def test_a_rating_offset_is_the_mean_residual_shrunk_by_the_prior():
    y, prediction = np.array([5.0, 4.0, 5.0, 3.0]), np.array([4.0, 4.0, 4.0, 4.0])
    assert fit_offset(TASKS["rating"], y, prediction, l2=0.0, steps=1) == pytest.approx(0.25)
    assert fit_offset(TASKS["rating"], y, prediction, l2=4.0, steps=1) == pytest.approx(1.0 / 8)


def test_a_binary_offset_without_prior_matches_the_merchants_base_rate():
    prediction = RNG.uniform(0.01, 0.2, 2000).astype(np.float32)
    y = (RNG.random(2000) < 0.3).astype(np.float32)  # this merchant converts far more than the model says
    b = fit_offset(TASKS["purchase"], y, prediction, l2=0.0, steps=20)
    assert b > 0 and shifted(TASKS["purchase"], prediction, b).mean() == pytest.approx(y.mean(), abs=1e-4)
    # a prior of many rows keeps a merchant near the global level; a merchant without rows keeps it
    assert 0 < fit_offset(TASKS["purchase"], y, prediction, l2=1e6, steps=20) < 0.05 * b
    assert fit_offset(TASKS["purchase"], y[:0], prediction[:0], l2=10.0, steps=5) == 0.0


def test_an_offset_never_reorders_a_merchants_rows():
    prediction = RNG.uniform(0.01, 0.99, 500)
    assert (np.argsort(shifted(TASKS["purchase"], prediction, 1.3)) == np.argsort(prediction)).all()


def test_a_personal_head_is_kept_only_where_it_lowers_the_validation_loss():
    from data.shards import Shard
    from tasks.personalization import kept_where_better
    tasks = [TASKS["rating"], TASKS["purchase"]]
    y = {"rating": np.array([5.0, 1.0, 4.0, np.nan], np.float32), "purchase": np.array([1, 0, 0, 1], np.float32)}
    val = Shard(np.zeros((4, 1), np.int64), {TASKS[t].label: v for t, v in y.items()}, {})
    global_val = {"rating": np.full(4, 3.0, np.float32), "purchase": np.array([0.6, 0.4, 0.4, 0.6], np.float32)}
    personal_val = {"rating": np.array([4.5, 1.5, 4.0, 0.0], np.float32),  # closer on every labelled row
                    "purchase": np.array([0.4, 0.6, 0.6, 0.4], np.float32)}  # further on every row
    assert kept_where_better(tasks, val, global_val, personal_val) == {"rating": True, "purchase": False}
    unlabelled = Shard(val.features, {TASKS["rating"].label: np.full(4, np.nan, np.float32),
                                      TASKS["purchase"].label: y["purchase"]}, {})
    assert kept_where_better(tasks, unlabelled, global_val, personal_val)["rating"]  # nothing says otherwise


def test_bad_settings_are_one_line():
    with pytest.raises(InputError, match="personalization must be one of none, local_bias, local_heads, got 'towers'"):
        personalization_of({"personalization": {"name": "towers"}})
    with pytest.raises(InputError, match="personalization.steps >= 1, got 0.1 and 0"):
        personalization_of({"personalization": {"name": "local_heads", "l2": 0.1, "steps": 0}})
    with pytest.raises(InputError, match="personalization.l2 must be >= 0"):
        personalization_of({"personalization": {"name": "local_bias", "l2": -1, "steps": 5}})


def test_local_bias_scores_beside_the_global_model_with_offsets_fitted_on_the_merchants_latest_rows(tiny_cfg):
    experiment = open_experiment(tiny_cfg("personalization=local_bias", "personalization.l2=0", "data.val_fraction=0.2"))
    model = experiment.new_model()  # untrained: it predicts the pooled base rate for every merchant
    merchant = experiment.index.merchant_ids[0]
    train, test, val = (experiment.shard(merchant, s) for s in ("train", "test", "val"))
    (metrics, _), (validation, _) = evaluate_merchant(model, experiment, train, test, val, with_ranking=False)
    for task in experiment.task_names:
        assert {"logloss_personal", "auc_personal"} <= set(metrics[task]) or "rmse_personal" in metrics[task]
        assert not any(k.endswith("_personal") for k in validation[task])  # selection sees the global model
    # fitted without prior on the validation split, the offset brings the mean prediction there to its base rate
    val_predictions = predict(model, val.features, experiment.tasks, experiment.device)
    offsets = local_offsets(model, experiment.tasks, experiment.device, (val, val_predictions), train, 0.0, 20)
    for task in experiment.tasks:
        if task.kind == "binary":
            y = val.labels[task.label]
            mask = np.isfinite(y)
            assert shifted(task, val_predictions[task.name][mask], offsets[task.name]).mean() == \
                pytest.approx(y[mask].mean(), abs=1e-3)


def test_local_heads_train_only_a_copy_of_the_heads_on_the_merchants_own_rows(tiny_cfg):
    import torch
    from tasks.personalization import head_parameters, local_heads
    from tasks.training import masked_task_losses, task_labels
    experiment = open_experiment(tiny_cfg("personalization=local_heads", "data.val_fraction=0.2"))
    torch.manual_seed(0)
    model = experiment.new_model()
    merchant = experiment.index.merchant_ids[0]
    train = experiment.shard(merchant, "train")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    heads = {id(p) for p in head_parameters(model)}
    head_names = {name for name, p in model.named_parameters() if id(p) in heads}
    assert head_names and not any(name.startswith(("embedding.", "first_order.")) for name in head_names)

    def loss(m):
        m.eval()
        with torch.no_grad():
            labels = {k: torch.as_tensor(v) for k, v in task_labels(train, experiment.tasks).items()}
            return sum(float(v) for v in masked_task_losses(m(torch.as_tensor(train.features)), labels,
                                                            experiment.tasks).values())
    personal = local_heads(model, experiment.new_weighting(), train, experiment.tasks, experiment.cfg["train"],
                           experiment.device, l2=0.0, steps=3, seed=0)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # the global model untouched
    moved = {name for name, p in personal.named_parameters() if not torch.equal(p, before[name])}
    assert moved and moved <= head_names  # the shared embeddings, experts and biases held
    assert loss(personal) < loss(model)  # its own rows fit better
    # A strong pull towards the global heads keeps them closer than a weak one
    near = local_heads(model, experiment.new_weighting(), train, experiment.tasks, experiment.cfg["train"],
                       experiment.device, l2=50.0, steps=3, seed=0)
    distance = {m: sum(float((dict(x.named_parameters())[n].detach() - before[n]).norm()) for n in moved)
                for m, x in (("far", personal), ("near", near))}
    assert distance["near"] < distance["far"]
    (metrics, _), (validation, _) = evaluate_merchant(model, experiment, train, experiment.shard(merchant, "test"),
                                                      experiment.shard(merchant, "val"), with_ranking=False)
    for task in experiment.task_names:
        assert {"logloss_personal", "auc_personal"} <= set(metrics[task]) or "rmse_personal" in metrics[task]
        assert not any(k.endswith("_personal") for k in validation[task])
