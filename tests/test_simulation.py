"""Real Flower simulations, 4 merchants: through the `merchant-fl` door as a process (its log), through the
door's main() in this process (exit code and error line), and through launch.cli.run, what the door runs."""

import json
import math
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from core.config import compose_config, to_plain
from launch.cli import main as cli_main
from launch.cli import run as cli_run
from tasks.experiment import open_experiment
from tasks.selection import selection_loss
from tests.conftest import TINY, flower_log, isolated, assert_kept_test_metrics

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]


def test_federated_training_improves_every_task(door_run):
    """The `merchant-fl` process of tests/conftest.py door_run (DENSE, the defaults)."""
    out, run = door_run
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["mode"] == "federated" and doc["failures"] == []
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    assert len(doc["per_merchant"]) == 4
    untrained, trained = doc["rounds"][0]["tasks"], doc["rounds"][-1]["tasks"]
    assert trained["click"]["auc"] > untrained["click"]["auc"] + 0.03
    assert trained["purchase"]["logloss"] < untrained["purchase"]["logloss"]
    assert trained["rating"]["rmse"] < untrained["rating"]["rmse"]
    # The last round is kept (select_round=last) and scored once more, with ranking.
    assert doc["selected_round"] == 2 and "ranking" not in trained
    assert {t: m for t, m in doc["tasks"].items() if t != "ranking"} == trained
    assert set(doc["tasks"]["ranking"]) == {"hr@10", "ndcg@10", "hr@10_full", "ndcg@10_full"}
    assert (out / "metrics.png").exists() and (out / "model.pt").exists()
    # The per-round table reaches the log.
    assert "purchase.auc" in run.stdout + run.stderr
    # Each round records the prior every task's per-id biases took (estimated: bias_l2=auto).
    assert "bias_priors" not in doc["rounds"][0]
    for r in doc["rounds"][1:]:
        assert set(r["bias_priors"]) == {"rating", "purchase", "click"}
        assert all(set(by_column) == {"user_id", "item_id"} and all(0 < v < math.inf for v in by_column.values())
                   for by_column in r["bias_priors"].values())


@pytest.fixture(scope="module")
def early_stopped(tmp_path_factory, shared_ray):
    """One run with a validation split (select_round auto: best_val), patience=1 and a learning rate high
    enough to overfit within a few of its 12 rounds: (metrics.json, the lines Flower logged)."""
    out = tmp_path_factory.mktemp("early-stopped") / "run"
    with isolated(tmp_path_factory), flower_log() as log:
        cli_run(compose_config([*TINY, "data.val_fraction=0.2", "federation.rounds=12", "patience=1", "train.lr=0.3",
                                "ranking.enabled=false"]), out)
    return json.loads((out / "metrics.json").read_text()), log


def test_best_val_keeps_the_round_with_the_lowest_validation_loss(early_stopped):
    doc, log = early_stopped
    assert doc["config"]["select_round"] == "best_val"
    experiment = open_experiment(doc["config"])
    validations = [r["validation"] for r in doc["rounds"]]
    losses = [selection_loss(validations[:k + 1], experiment.tasks) for k in range(len(validations))]
    assert all(math.isfinite(v) for v in losses) and set(doc["rounds"][0]["validation"]) == {"rating", "purchase", "click"}
    kept = losses.index(min(losses))
    assert doc["selected_round"] == kept
    assert_kept_test_metrics(doc)
    assert any(f"kept round {kept} (select_round=best_val)" in line for line in log)


def drifting_table(path, late_click: str, n=8000):
    """Two merchants' timed rows whose ratings follow the item throughout, while after the first 60 % of
    time the click label follows the item's parity in reverse (`reversed`: a click head that learns
    from train does worse than the click rate on the later validation and test rows) or as before
    but at twice the rate (`doubled`: the head still ranks rows right, at too low a level)."""
    rng = np.random.default_rng(0)
    item = rng.integers(0, 60, n)
    late = np.arange(n) >= 0.6 * n
    follows = (item % 2 == 0) ^ (late & (late_click == "reversed"))
    rate = np.where(late & (late_click == "doubled"), 0.9, 0.45)
    pd.DataFrame({"merchant_id": np.where(np.arange(n) % 2 == 0, "a", "b"), "user_id": rng.integers(0, 300, n),
                  "item_id": item, "timestamp": np.arange(n),
                  "rating": np.clip(np.round(1 + item / 15 + rng.normal(0, 0.5, n)), 1, 5),
                  "click": (follows & (rng.random(n) < rate)).astype(int)}).to_parquet(path)


def table_run(tmp_path, late_click: str, *overrides: str) -> tuple[dict, list[str]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    drifting_table(tmp_path / "t.parquet", late_click)
    out = tmp_path / "run"
    with flower_log() as log:
        cli_run(compose_config(["data=table", f"data.path={tmp_path / 't.parquet'}", "data.val_fraction=0.2",
                                "federation.rounds=3", "ranking.enabled=false", *overrides]), out)
    return json.loads((out / "metrics.json").read_text()), log


@pytest.mark.parametrize("mode", ["federated", "centralized", "local"])
def test_a_head_worse_than_its_prior_on_validation_predicts_its_prior(tmp_path, mode):
    """The kept model's click head is replaced by its prior (the train click rate) in every mode; the
    rating head stays as trained, so the run keeps a trained round rather than the untrained round 0."""
    doc, log = table_run(tmp_path, "reversed", f"mode={mode}")
    heads = doc["prior_heads"] if mode != "local" else doc["prior_heads"]["a"]
    assert set(heads) == {"click"} and heads["click"] > 1.0
    if mode == "local":  # each merchant by its own validation rows: both see the reversal
        assert set(doc["prior_heads"]) == {"a", "b"} and all(r > 0 for r in doc["selected_round"].values())
        assert doc["tasks"]["click"]["auc"] == 0.5
        return
    assert doc["selected_round"] > 0
    assert_kept_test_metrics(doc)
    assert doc["tasks"]["click"]["auc"] == 0.5 and "click" not in doc["calibration"]
    assert any("click (" in line and "that head predicts its prior" in line for line in log)
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    click_bias = [v for k, v in saved["state"].items() if k.startswith("first_order.tables.click")]
    assert all(float(v.abs().sum()) == 0 for v in click_bias)  # every click id bias back to zero


@pytest.mark.parametrize("mode", ["federated", "centralized", "local"])
def test_the_kept_model_is_recalibrated_to_the_level_validation_shows(tmp_path, mode):
    """The click rate doubles after training's window: recalibrated on validation (from the nodes'
    sums), the kept model's click head ranks rows as before (the same AUC) and predicts the later,
    higher rate (test log-loss below the kept round's); with calibrate=false it stays as trained. The
    refits with the validation rows are off here, so the kept model is the calibrated round's."""
    doc, log = table_run(tmp_path, "doubled", f"mode={mode}", "refit_biases=false",
                         "refit_embeddings=false")
    kept = doc["selected_round"] if mode != "local" else doc["selected_round"]["a"]
    calibration = doc["calibration"] if mode != "local" else doc["calibration"]["a"]
    a, b = calibration["click"]
    assert kept > 0 and not doc["prior_heads"] and a > 0 and b > 0.3  # towards the doubled rate
    priors = doc["rounds"][1]["bias_priors"] if mode != "local" else doc["rounds"][1]["bias_priors"]["a"]
    assert priors["click"]["user_id"] > 0  # the prior its Newton step took, in every mode
    if mode != "local":
        assert_kept_test_metrics(doc)
        assert doc["tasks"]["click"]["logloss"] < doc["rounds"][kept]["tasks"]["click"]["logloss"] - 0.01
        assert any("recalibrated on the validation rows" in line and "click a=" in line for line in log)
        uncalibrated, _ = table_run(tmp_path / "off", "doubled", f"mode={mode}", "calibrate=false", "refit_biases=false",
                                    "refit_embeddings=false")
        assert uncalibrated["calibration"] == {} and uncalibrated["tasks"] == uncalibrated["rounds"][kept]["tasks"]


def test_a_round_where_every_client_fails_fails_the_run(tmp_path, monkeypatch, capsys):
    """The door's own main() in this process (on the session's Ray; test_cli runs the door as a process)."""
    index = open_experiment(to_plain(compose_config(TINY))).index
    for merchant in index.merchants:  # every node's prepared training split is gone: each client errors
        (merchant.root / "train.parquet").unlink()
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["merchant-fl", *TINY, f"hydra.run.dir={out}"])
    try:
        with pytest.raises(SystemExit) as exited:
            cli_main()
    finally:
        for merchant in index.merchants:
            shutil.rmtree(merchant.root)
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    # Ray forwards the actor logs of this session's earlier simulations (shared Ray) whenever they come
    own = [line for line in stderr.splitlines() if "ClientAppActor pid=" not in line]
    assert own[-1].startswith("merchant-fl: error: round 1: every one of 4 clients failed to train")
    assert "Traceback" not in stderr
    assert not (out / "metrics.json").exists()


# Each architecture also carries one wire format end to end (core/update_codec.py; esmm: sparse rows of
# its SGD-trained purchase biases), esmm the merchants' local offsets (personalization=local_bias), ple
# their own heads (local_heads) and the merchants' optimizer state kept in Flower's Context.state over
# three rounds (the first fits only the biases). Through the door's own run() (the process door is proven above).
@pytest.mark.parametrize("model,compression,personalization,extra",
                         [("mmoe", "int8", "none", []),
                          ("ple", "float16", "local_heads", ["train.keep_optimizer_state=true", "federation.rounds=3"]),
                          ("esmm", "none", "local_bias", [])])
def test_every_architecture_trains_federated(tmp_path, model, compression, personalization, extra):
    out = tmp_path / "run"
    cli_run(compose_config([*TINY, f"model={model}", "tasks=[purchase,click]", f"federation.compression={compression}",
                            f"personalization={personalization}", *extra]), out)
    doc = json.loads((out / "metrics.json").read_text())
    rounds = doc["config"]["federation"]["rounds"]
    assert doc["config"]["model"]["name"] == model and len(doc["rounds"]) == rounds + 1 and doc["failures"] == []
    assert doc["config"]["federation"]["compression"] == compression
    untrained, trained = doc["rounds"][0]["tasks"], doc["rounds"][-1]["tasks"]
    for task in ("purchase", "click"):
        assert trained[task]["logloss"] < untrained[task]["logloss"], task
        # the personalised scores travel beside the global ones; an offset cannot reorder a merchant's rows
        personal = {k: v for k, v in doc["per_merchant"]["m00"][task].items() if k.endswith("_personal")}
        if personalization == "none":
            assert not personal
        else:
            assert set(personal) == {"auc_personal", "logloss_personal"}
            assert all(0 < v < 1 for v in personal.values())
        if personalization == "local_bias":
            assert personal["auc_personal"] == pytest.approx(doc["per_merchant"]["m00"][task]["auc"], abs=1e-3)


def test_early_stopping_ends_federated_training_patience_rounds_after_the_best(early_stopped):
    doc, _ = early_stopped
    played = doc["rounds"][-1]["round"]
    assert doc["config"]["select_round"] == "best_val"  # auto, with a validation split
    assert played < 12 and played == doc["selected_round"] + 1
