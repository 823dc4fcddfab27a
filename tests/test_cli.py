"""The `merchant-fl` door: bad input is one clear line and a non-zero exit; every mode writes outputs."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from core.config import compose_config
from core.errors import InputError
from launch.cli import run as cli_run
from server_app.orchestration import run_job
from tasks.experiment import open_experiment
from tasks.selection import selection_loss
from tests.conftest import DENSE, ROOT, TINY, cli_env, assert_kept_test_metrics


def merchant_fl(*args, cwd):
    # This checkout's code, whichever checkout the environment's editable install points at.
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**cli_env(), "PYTHONPATH": str(ROOT)}, timeout=600)


def good_table(path, **overrides):
    frame = pd.DataFrame({"merchant_id": ["a"] * 5 + ["b"] * 5, "user_id": range(10), "item_id": range(10),
                          "purchase": [0, 1] * 5, "click": [1, 1] * 5})
    for column, value in overrides.items():
        frame[column] = value
    frame.to_csv(path, index=False)
    return path


BAD_INPUT = [
    (None, ["data=table", "data.path={tmp}/missing.csv"], "data.path: no such file: {tmp}/missing.csv"),
    (lambda p: pd.DataFrame({"merchant_id": [1], "item_id": [1], "click": [1]}).to_csv(p, index=False),
     ["data=table", "data.path={tmp}/t.csv"], "{tmp}/t.csv: missing required column 'user_id'"),
    (lambda p: good_table(p, purchase=[0, 1, 7, 0, 0, 0, 0, 0, 0, 0]), ["data=table", "data.path={tmp}/t.csv"],
     "{tmp}/t.csv: column 'purchase' must be 0 or 1 (or empty); found 7 at row 3"),
    (lambda p: good_table(p), ["data=table", "data.path={tmp}/t.csv", "tasks=[rating]"],
     "task 'rating' asked for, but the data has no 'rating' labels"),
    (lambda p: good_table(p), ["data=table", "data.path={tmp}/t.csv", "mode=solo"], "unknown mode 'solo'"),
    (lambda p: good_table(p), ["data=table", "data.path={tmp}/t.csv", "data.val_fraction=1.5"],
     "data.val_fraction must be in [0, 1), got 1.5"),
    (lambda p: good_table(p), ["data=table", "data.path={tmp}/t.csv", "data.val_fraction=0", "select_round=best_val"],
     "select_round=best_val needs validation rows: set data.val_fraction > 0"),
    (None, [*TINY, "train.optimizer=sgd", "train.lr=1e30", "train.wide_rounds=0"], "training diverged: the "),
    (None, [*TINY, "train.lr=1e300"], "train.lr must be a positive number a float32 can hold, got 1e+300"),
    (lambda p: good_table(p), ["data=table", "data.path={tmp}/t.csv", "data.val_fraction=abc"],
     "data.val_fraction must be a number, got 'abc'"),
    (None, [*TINY, "+data.synthetic.no_rating_fraction=1.0"],
     "data.synthetic.no_rating_fraction must be in [0, 1) and leave the largest of the 4 merchants out, got 1.0"),
    (None, [*TINY, "+data.synthetic.n_merchant=3"], "data.synthetic has no setting 'n_merchant'"),
    (None, [*TINY, "train.wide_rounds=atuo"], "train.wide_rounds='atuo': give auto or a value"),
    (None, [*TINY, "train.keep_optimizer_state=atuo"], "train.keep_optimizer_state='atuo': give auto or a value"),
    (None, [*TINY, "refit_biases=often"], "refit_biases='often': give auto, true, false or a number of Newton steps >= 0"),
    (None, [*TINY, "train.bias_l2={{default:auto,click:ten}}"],
     "train.bias_l2 must be auto or a number >= 0, got 'ten' for task 'click'"),
]


def bad_input_overrides(tmp_path, setup, args) -> list[str]:
    if setup is not None:
        setup(tmp_path / "t.csv")
    mode = [] if any(a.startswith("mode=") for a in args) else ["mode=centralized"]
    return [*(a.format(tmp=tmp_path) for a in args), *mode]


# The door itself, as a real `merchant-fl` process: an input error found before any training (a missing
# file) and one found while training (divergence). Every other bad input takes the same door: the
# test below raises each one through the door's own run().
@pytest.mark.parametrize("setup, args, expected", [BAD_INPUT[0], BAD_INPUT[7]], ids=["missing-file", "diverged"])
def test_the_door_prints_bad_input_as_one_line_exits_2_and_writes_nothing(tmp_path, setup, args, expected):
    out = tmp_path / "out"
    run = merchant_fl(*bad_input_overrides(tmp_path, setup, args), f"hydra.run.dir={out}", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith(f"merchant-fl: error: {expected.format(tmp=tmp_path)}")
    assert "Traceback" not in run.stderr + run.stdout
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()


@pytest.mark.parametrize("setup, args, expected", BAD_INPUT)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, setup, args, expected):
    """launch.cli.run, which `merchant-fl` runs: the InputError its door prints as `merchant-fl: error:
    <message>` with exit code 2 (test above), and no output."""
    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        cli_run(compose_config(bad_input_overrides(tmp_path, setup, args)), out)
    message = str(caught.value)
    assert message.startswith(expected.format(tmp=tmp_path)) and "\n" not in message
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_baseline_modes_write_every_output(tmp_path, tiny_cfg, mode):
    cfg = tiny_cfg(f"mode={mode}", *DENSE, "data.val_fraction=0.1", "select_round=best_val")
    result = run_job(cfg, tmp_path)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    experiment = open_experiment(cfg)
    if mode == "centralized":  # the round with the lowest validation loss is kept and reported
        validations = [r["validation"] for r in doc["rounds"]]
        losses = [selection_loss(validations[:k + 1], experiment.tasks) for k in range(len(validations))]
        assert doc["selected_round"] == losses.index(min(losses))
        assert_kept_test_metrics(doc)
    else:  # every merchant keeps its own round, by its own validation rows
        assert set(doc["selected_round"]) == set(experiment.index.merchant_ids)
        assert all(0 <= r <= 2 for r in doc["selected_round"].values())
    assert doc["mode"] == mode and set(doc["tasks"]) == {"rating", "purchase", "click", "ranking"}
    ranking = doc["tasks"]["ranking"]  # the rating head ranks, on the final round only
    assert set(ranking) == {"hr@10", "ndcg@10", "hr@10_full", "ndcg@10_full"}
    assert all(0.0 <= v <= 1.0 for v in ranking.values()) and ranking["hr@10_full"] <= ranking["hr@10"]
    assert "ranking" not in doc["rounds"][0]["tasks"]
    assert len(doc["rounds"]) == 3 and len(doc["per_merchant"]) == 4
    assert set(doc["oracle"]["click"]) == {"auc", "logloss"}
    assert (tmp_path / "metrics.png").stat().st_size > 10_000
    state = torch.load(tmp_path / "model.pt", weights_only=False)["state"]
    assert (set(state) == set(result.per_merchant)) == (mode == "local")
    first, last = doc["rounds"][0]["tasks"], doc["rounds"][-1]["tasks"]
    assert last["click"]["logloss"] < first["click"]["logloss"]
    if mode == "centralized":  # tiny merchants alone may overfit ratings; pooled data must not
        assert last["rating"]["rmse"] < first["rating"]["rmse"]


def test_a_small_merchants_model_with_its_own_bias_stays_calibrated(tmp_path, tiny_cfg):
    """mode=local with the merchant bias: a model on one small merchant's rows, where the deep part
    saturates within a round and the prior-free global bias's curvature nearly vanishes. Unbounded,
    its Newton step moved the click bias by 3.7 logits and the log-loss rose above round 0's."""
    cfg = tiny_cfg("mode=local", *DENSE, "data.val_fraction=0.1", "select_round=best_val", "ranking.enabled=false",
                   "data.features.bias_only=[merchant_id]")
    run_job(cfg, tmp_path)
    rounds = json.loads((tmp_path / "metrics.json").read_text())["rounds"]
    assert all(r["tasks"][t]["logloss"] < rounds[0]["tasks"][t]["logloss"]
               for r in rounds[1:] for t in ("purchase", "click"))


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_early_stopping_ends_training_patience_rounds_after_the_best(tmp_path, tiny_cfg, mode):
    rounds, patience = 12, 1
    cfg = tiny_cfg(f"mode={mode}", "data.val_fraction=0.2", f"federation.rounds={rounds}", f"patience={patience}",
                   "train.lr=0.3", "ranking.enabled=false")
    run_job(cfg, tmp_path)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["config"]["select_round"] == "best_val"  # auto, with a validation split
    played = doc["rounds"][-1]["round"]
    kept = doc["selected_round"] if mode == "centralized" else max(doc["selected_round"].values())
    assert played < rounds  # a high learning rate overfits this tiny platform within a few rounds...
    assert played == kept + patience  # ...and training stopped `patience` rounds after the best one
