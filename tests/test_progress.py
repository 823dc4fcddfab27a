"""Watching a run: the progress display (a bar on a terminal, the per-round table as log lines
otherwise) and logger=tensorboard (events per round, merchants combined and per merchant; nothing
written or imported when off)."""

from __future__ import annotations

import io
import json
import logging

import pytest
from rich.console import Console

from server_app.outputs import RoundRecord
from server_app.progress import RunProgress

NAMES = {"purchase": ("auc", "logloss"), "click": ("auc", "logloss")}


def records():
    return [RoundRecord(r, {"purchase": {"auc": 0.5 + r / 10, "logloss": 0.2}, "click": {"auc": 0.6, "logloss": 0.3}})
            for r in range(3)]


def test_a_terminal_gets_a_bar_with_the_latest_metrics_and_no_log_lines(caplog):
    screen = io.StringIO()
    progress = RunProgress("centralized", rounds=2, steps_per_round=3,
                           console=Console(file=screen, force_terminal=True, width=200))
    with caplog.at_level(logging.INFO, logger="flwr"), progress:
        for record in records():
            progress.report(record, NAMES)
    text = screen.getvalue()
    assert progress.interactive and "centralized epochs" in text and "6/6" in text  # 2 rounds x 3 local epochs
    assert "purchase auc 0.7000  click auc 0.6000" in text  # each task's headline metric, this round
    assert "purchase.auc" in text  # the per-round table, printed above the bar
    assert "per-round test metrics" not in caplog.text


def test_a_non_terminal_gets_the_per_round_table_as_log_lines(caplog):
    screen = io.StringIO()
    progress = RunProgress("federated", rounds=2, console=Console(file=screen, force_terminal=False))
    with caplog.at_level(logging.INFO, logger="flwr"), progress:
        for record in records():
            progress.report(record, NAMES)
    assert not progress.interactive and screen.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "per-round test metrics (merchants weighted by test labels):"
    assert lines[1].split() == ["round", "purchase.auc", "purchase.logloss", "click.auc", "click.logloss"]
    assert [line.split()[:2] for line in lines[2:]] == [["0", "0.5000"], ["1", "0.6000"], ["2", "0.7000"]]


def test_a_piped_run_prints_plain_lines_writes_no_tensorboard_and_imports_none(door_run):
    """A real job whose output is a pipe (the `merchant-fl` process of tests/conftest.py door_run): the table
    as plain lines, no bar; logger=none by default."""
    out, run = door_run
    assert run.returncode == 0, run.stderr[-3000:]
    output = run.stdout + run.stderr
    assert "per-round test metrics" in output and "purchase.auc" in output
    assert "━" not in output and "\x1b[?25l" not in output  # no bar, no cursor control
    assert "tensorboard imported: False" in run.stdout
    assert (out / "metrics.json").exists() and not (out / "tensorboard").exists()


def scalars(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(path))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_tensorboard_holds_every_rounds_metrics_combined_and_per_merchant(tiny_runs, mode):
    """On the shared tiny run of each baseline mode (tests/conftest.py tiny_runs: logger=tensorboard, a validation split)."""
    run_dir = tiny_runs[mode]
    doc = json.loads((run_dir / "metrics.json").read_text())
    assert doc["mode"] == mode and doc["config"]["logger"]["name"] == "tensorboard"
    logged = scalars(run_dir / "tensorboard")
    for record in doc["rounds"]:
        for task, metrics in record["tasks"].items():
            for name, value in metrics.items():
                assert logged[f"test/{task}/{name}"][record["round"]] == pytest.approx(value, rel=1e-6)
        for task, metrics in record["validation"].items():
            for name, value in metrics.items():
                assert logged[f"validation/{task}/{name}"][record["round"]] == pytest.approx(value, rel=1e-6)
        for task, value in record["train_loss"].items():
            assert logged[f"train_loss/{task}"][record["round"]] == pytest.approx(value, rel=1e-6)
    assert 2 in logged["train_loss/click"]
    merchants = {tag.split("/")[1] for tag in logged if tag.startswith("merchant/")}
    assert merchants == set(doc["per_merchant"])
    assert sorted(logged["merchant/m00/click/auc"]) == [0, 1, 2]
