"""Using a trained run: serving.load rebuilds the model a tiny real run kept (centralized: one model;
local: one per merchant), scores rows exactly as the run's own evaluation did, and recommends."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from data.shards import merchant_seed
from data.splits import split_positions
from serving import load, prediction_column
from tests.conftest import ROOT, merchant_files


@pytest.fixture
def runs(tiny_runs):
    return tiny_runs


def test_run_dir_holds_what_rebuilds_the_model(runs):
    doc = json.loads((runs["centralized"] / "metrics.json").read_text())
    assert doc["plan"]["tasks"] == ["rating", "purchase", "click"]
    assert set(doc["plan"]["label_stats"]["rating"]) >= {"mean", "std"}
    assert sorted(doc["merchant_train_rows"]) == ["m00", "m01", "m02", "m03"]
    assert (runs["centralized"] / "merchants.png").stat().st_size > 10_000


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_scores_reproduce_the_runs_own_test_metrics(runs, mode):
    """Each merchant's test rows, scored from their raw ids by the loaded model (local: the merchant's own),
    give the per-merchant test metrics the run reported."""
    assert_scores_reproduce_test_metrics(runs[mode], mode)


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_a_federated_run_is_served_and_logged_per_merchant(recorded_federated_run):
    """On the shared federated run (tests/conftest.py recorded_federated_run: a real simulation, logger=tensorboard)."""
    run = recorded_federated_run("none")
    out = run.dir
    assert run.cfg["mode"] == "federated" and run.cfg["logger"]["name"] == "tensorboard"
    assert_scores_reproduce_test_metrics(out, "federated")
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"merchant/m03/click/auc" in events[0].read_bytes()
    assert (out / "merchants.png").exists()


def assert_scores_reproduce_test_metrics(run_dir, mode):
    doc = json.loads((run_dir / "metrics.json").read_text())
    data = doc["config"]["data"]
    model = load(run_dir)
    assert model.mode == mode and (model.shared is None) == (mode == "local")
    for merchant, frame in merchant_files(run_dir).items():
        stamps = frame["timestamp"].to_numpy() if "timestamp" in frame.columns else None
        _, _, test = split_positions(len(frame), data["test_fraction"], data["val_fraction"],
                                     data["split_seed"] + merchant_seed(merchant), stamps)
        rows = frame.iloc[test]
        scores = model.score(rows)
        assert list(scores.columns) == ["predicted_rating", "purchase_probability", "click_probability"]
        for task in model.tasks:
            labelled = rows[task.label].notna().to_numpy()
            if not labelled.any():
                assert task.name not in doc["per_merchant"][merchant]
                continue
            metrics = task.metrics_fn(rows[task.label].to_numpy()[labelled],
                                      scores[prediction_column(task)].to_numpy()[labelled])
            assert metrics == pytest.approx(doc["per_merchant"][merchant][task.name], rel=1e-5), (merchant, task.name)


def test_local_models_differ_per_merchant_and_refuse_other_merchants(runs):
    model = load(runs["local"])
    rows = pd.DataFrame({"merchant_id": ["m00", "m01"], "user_id": ["u00001"] * 2, "item_id": ["i00001"] * 2})
    scores = model.score(rows)
    assert scores.iloc[0]["click_probability"] != scores.iloc[1]["click_probability"]
    with pytest.raises(InputError, match="unknown merchant 'm99': this mode=local run has one model per merchant"):
        model.score(rows.assign(merchant_id="m99"))
    shared = load(runs["centralized"])  # a shared model scores a merchant the run never saw
    assert np.isfinite(shared.score(rows.assign(merchant_id="m99")).to_numpy()).all()


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_recommend_is_the_best_unseen_items_of_the_merchants_catalogue(runs, mode):
    model = load(runs[mode])
    frame = merchant_files(runs[mode])["m01"]
    user = frame["user_id"].value_counts().index[0]
    seen = set(frame.loc[frame["user_id"] == user, "item_id"])
    catalogue = list(dict.fromkeys(frame["item_id"]))
    top = model.recommend("m01", user, k=5)
    # the same ranking by brute force: every unseen catalogue item scored for this user
    unseen = [i for i in catalogue if i not in seen]
    brute = model.score(pd.DataFrame({"merchant_id": "m01", "user_id": user, "item_id": unseen}))
    best = np.argsort(-brute["predicted_rating"].to_numpy(), kind="stable")[:5]
    assert top["item_id"].tolist() == [unseen[i] for i in best]
    assert top["rank"].tolist() == [1, 2, 3, 4, 5] and not seen & set(top["item_id"])
    assert top["predicted_rating"].is_monotonic_decreasing and top.attrs["ranked_by"] == "predicted_rating"
    assert ((top["click_probability"] > 0) & (top["click_probability"] < 1)).all()

    everything = model.recommend("m01", user, k=len(catalogue), include_seen=True, by="click")
    assert sorted(everything["item_id"]) == sorted(catalogue)
    assert set(everything.loc[everything["seen"], "item_id"]) == seen
    assert everything["click_probability"].is_monotonic_decreasing


def test_recommend_reads_the_merchants_own_file_when_given(runs, tmp_path):
    model = load(runs["centralized"])
    frame = merchant_files(runs["centralized"])["m02"]
    user = frame["user_id"].iloc[0]
    path = tmp_path / "m02.csv"
    frame.to_csv(path, index=False)
    from_file = model.recommend("m02", user, k=4, interactions=path)
    assert from_file.equals(model.recommend("m02", user, k=4))
    with pytest.raises(InputError, match=f"unknown merchant 'm01': {path} has no row of it"):
        model.recommend("m01", user, interactions=path)
    with pytest.raises(InputError, match="unknown user 'nobody': "):
        model.recommend("m02", "nobody", interactions=path)
    with pytest.raises(InputError, match="missing column 'item_id'"):
        model.recommend("m02", user, interactions=frame.drop(columns="item_id"))


def test_an_item_attribute_column_follows_the_candidate_item():
    """A further feature column with one value per item is taken from the candidate item, any other
    from the user's latest row."""
    from serving.catalogue import candidate_rows
    rows = pd.DataFrame({"merchant_id": "m", "user_id": ["u", "u", "v", "v"], "item_id": ["a", "b", "a", "c"],
                         "category": ["x", "y", "x", "z"], "device": ["phone", "web", "tv", "tv"]})
    candidates, seen = candidate_rows(rows, "m", "u", ["merchant_id", "user_id", "item_id", "category", "device"],
                                      "t", include_seen=True)
    assert candidates["category"].tolist() == ["x", "y", "z"] and candidates["device"].tolist() == ["web"] * 3
    assert seen.tolist() == [True, True, False]


def test_serving_imports_only_core_data_and_tasks():
    import re
    for path in (ROOT / "serving").glob("*.py"):
        imported = set(re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), re.M))
        assert not imported & {"server_app", "client_app", "launch", "benchmarks", "flwr"}, path.name


def test_a_run_dir_without_a_plan_or_with_a_broken_model_is_one_clear_error(runs, tmp_path):
    import torch
    checkpoint = torch.load(runs["centralized"] / "model.pt", weights_only=True)
    torch.save({k: v for k, v in checkpoint.items() if k != "plan"}, tmp_path / "model.pt")
    with pytest.raises(InputError, match="model.pt: no 'plan' in it; runs written before the model could be served"):
        load(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="model.pt: cannot read: "):
        load(tmp_path)
