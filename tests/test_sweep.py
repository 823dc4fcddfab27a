"""The sweep summary: one row per job (failed ones included), blanks for tasks a job lacks, one oracle row."""

import csv
import json
import subprocess
import sys

import pytest
import yaml
from hydra.types import RunMode
from omegaconf import OmegaConf

from launch.sweep import SweepSummary, summarize
from tests.conftest import ROOT, TINY, cli_env

CLICK_ORACLE = {"auc": 0.80, "logloss": 0.50}
RATING_ORACLE = {"rmse": 0.90, "mae": 0.70}


def fake_job(sweep, num, overrides, tasks=None, oracle=None):
    """A Hydra job folder; without `tasks` it has no metrics.json, i.e. the job failed."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if tasks is not None:
        (job / "metrics.json").write_text(json.dumps({"mode": "centralized", "tasks": tasks, "per_merchant": {},
                                                      "rounds": [], "oracle": oracle, "config": {}}))


@pytest.fixture
def sweep(tmp_path):
    sweep = tmp_path / "multirun" / "2026-11-30" / "12-00-00"
    fake_job(sweep, 0, ["mode=centralized", "tasks=[click]"], {"click": {"auc": 0.70, "logloss": 0.60}},
             {"click": CLICK_ORACLE})
    fake_job(sweep, 1, ["mode=centralized", "tasks=[rating,click]"],
             {"rating": {"rmse": 1.05, "mae": 0.85}, "click": {"auc": 0.72, "logloss": None}},
             {"rating": RATING_ORACLE, "click": CLICK_ORACLE})
    fake_job(sweep, 2, ["mode=federated", "tasks=[rating,click]"])
    return sweep


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_summary_rows_columns_and_files(sweep):
    summary = summarize(sweep)
    rows = read_csv(sweep / "summary.csv")
    assert list(rows[0]) == ["job", "overrides", "status", "rating.rmse", "rating.mae", "click.auc", "click.logloss"]
    assert [r["job"] for r in rows] == ["0", "1", "2", "oracle"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", ""]
    assert rows[0]["overrides"] == "mode=centralized tasks=[click]"
    assert rows[2]["overrides"] == "mode=federated tasks=[rating,click]"
    # job 0 has no rating task, job 1 an undefined logloss (null), the failed job nothing at all
    assert rows[0]["rating.rmse"] == rows[0]["rating.mae"] == "" and float(rows[0]["click.auc"]) == 0.70
    assert float(rows[1]["rating.rmse"]) == 1.05 and rows[1]["click.logloss"] == ""
    assert all(rows[2][c] == "" for c in ["rating.rmse", "rating.mae", "click.auc", "click.logloss"])
    # one oracle row, its rating taken from job 1 since job 0 had no rating task
    assert float(rows[3]["click.auc"]) == 0.80 and float(rows[3]["rating.rmse"]) == 0.90

    lines = (sweep / "summary.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 4 and summary.markdown == "\n".join(table)
    assert all(line.count("|") == 8 for line in table)
    assert set(table[1]) <= set("|-: ") and table[1].count("---") == 7
    assert table[2].startswith("| 0 | mode=centralized tasks=[click] | ok |  |  | 0.7000 |")

    assert (sweep / "summary.png").stat().st_size > 10_000
    assert summary.paths == [sweep / "summary.csv", sweep / "summary.md", sweep / "summary.png"]


def test_callback_writes_only_for_sweeps_and_prints_at_the_end(sweep, capsys):
    callback = SweepSummary()
    run_cfg = OmegaConf.create({"hydra": {"mode": RunMode.RUN, "sweep": {"dir": str(sweep)}}})
    callback.on_job_end(run_cfg, job_return=None)
    assert not (sweep / "summary.csv").exists()

    relative = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": sweep.name},
                                           "runtime": {"cwd": str(sweep.parent)}}})
    callback.on_job_end(relative, job_return=None)
    assert (sweep / "summary.csv").exists() and capsys.readouterr().out == ""
    callback.on_multirun_end(relative)
    out = capsys.readouterr().out
    assert "| job | overrides | status |" in out and f"wrote {sweep / 'summary.png'}" in out


@pytest.mark.parametrize("make", [lambda d: d.mkdir(), lambda d: None], ids=["empty", "missing"])
def test_cli_without_jobs_is_one_line_and_exit_2(tmp_path, make):
    empty = tmp_path / "empty"
    make(empty)
    run = subprocess.run([sys.executable, "-m", "launch.sweep", str(empty)], cwd=ROOT, capture_output=True,
                         text=True, env=cli_env(), timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert run.stderr.startswith(f"merchant-fl sweep: error: {empty}: no ")


@pytest.mark.slow
def test_real_sweep_writes_the_summary(tmp_path):
    # This checkout's code, whichever checkout the environment's editable install points at.
    env = {**cli_env(), "MERCHANT_FL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    overrides = [o for o in TINY if o.startswith("data.")]
    run = subprocess.run([sys.executable, "-m", "launch.cli", "-m", "mode=centralized",
                          "tasks=[click],[click,purchase]", *overrides, "federation.rounds=1",
                          f"hydra.sweep.dir={tmp_path}/mr"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    mr = tmp_path / "mr"
    rows = read_csv(mr / "summary.csv")
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok"), ("oracle", "")]
    assert rows[0]["overrides"] == " ".join(["mode=centralized", "tasks=[click]", *overrides, "federation.rounds=1"])
    assert rows[0]["purchase.auc"] == ""
    assert float(rows[1]["purchase.auc"]) > 0.5 and float(rows[2]["purchase.auc"]) > 0.5
    assert "| job | overrides | status |" in run.stdout and f"wrote {mr / 'summary.png'}" in run.stdout
    assert (mr / "summary.md").exists() and (mr / "summary.png").stat().st_size > 10_000
