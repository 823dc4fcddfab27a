"""Shared test set-up: a private shard cache and Flower home, and tiny configs composed from conf/."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from core.config import compose_config, to_plain

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.synthetic.n_merchants=4", "data.synthetic.n_rows=3000", "data.synthetic.n_users=400",
        "data.synthetic.n_items=200", "federation.rounds=2", "device=cpu"]
# Denser than TINY, so that two rounds carry enough signal for ratings too.
DENSE = ["data.synthetic.n_rows=8000", "data.synthetic.n_users=200", "data.synthetic.n_items=80"]


def set_test_env(env: pytest.MonkeyPatch, base: Path) -> None:
    env.setenv("MERCHANT_FL_CACHE", str(base / "shard-cache"))
    env.setenv("FLWR_HOME", str(base / "flwr-home"))
    # One torch/OpenMP thread in this process and in every process it starts: the test models are
    # tiny, and two OpenMP threads on a busy 2-core machine spin against each other (tens of times
    # slower). Ray gives each simulated client its own setting (federation.client_cpus) regardless.
    env.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    for key, value in {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}.items():
        env.setenv(key, value)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    set_test_env(monkeypatch, tmp_path_factory.getbasetemp())
    yield


@contextmanager
def isolated(tmp_path_factory):
    """isolated_env's environment for a module- or session-scoped fixture (set up before isolated_env)."""
    with pytest.MonkeyPatch.context() as env:
        set_test_env(env, tmp_path_factory.getbasetemp())
        yield


@pytest.fixture(scope="session")
def shared_ray():
    """One Ray cluster for the in-process Flower simulations of the session: a module that runs them
    says `pytestmark = pytest.mark.usefixtures("shared_ray")`. Flower's Ray backend starts Ray when it
    is not running and shuts it down after each simulation (several seconds each way); from the first
    module that uses this fixture on, ray.shutdown is a no-op and the real one runs at the session's
    end (one cluster per pytest worker: `make test` runs two). Each simulation still builds its own
    pool of ClientApp actors on the cluster and kills it.
    The cluster's processes keep the environment of its start: isolated_env's, the same for every test
    (a test that needs other environment variables in its simulated clients must not share it)."""
    import ray

    shutdown = ray.shutdown
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray, "shutdown", lambda *args, **kwargs: None)
        try:
            yield
        finally:
            shutdown()


@pytest.fixture
def tiny_cfg():
    """A plain run config on a 4-merchant synthetic platform, with extra overrides."""
    def make(*overrides: str) -> dict:
        return to_plain(compose_config(TINY + list(overrides)))
    return make


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """mode -> the output directory of a finished tiny run (centralized, local), for tests that use a
    trained model or read its outputs: a validation split (select_round auto: best_val), logger=tensorboard."""
    from server_app.orchestration import run_job

    out = {}
    with isolated(tmp_path_factory):
        for mode in ("centralized", "local"):
            cfg = to_plain(compose_config([*TINY, f"mode={mode}", "data.val_fraction=0.2", "logger=tensorboard",
                                           "ranking.enabled=false"]))
            out[mode] = tmp_path_factory.mktemp(f"run-{mode}")
            run_job(cfg, out[mode])
    return out


@pytest.fixture(scope="session")
def door_run(tmp_path_factory):
    """A finished `merchant-fl` process (the console script's main(), this checkout's code) whose output
    is a pipe: a federated simulation of DENSE data with every other setting at its default (logger none,
    select_round last, ranking on). (run directory, the CompletedProcess); as it exits the process
    prints whether torch.utils.tensorboard was ever imported."""
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("door-run")
    code = ("import sys; from launch.cli import main; sys.argv = ['merchant-fl', *sys.argv[1:]]\n"
            "try:\n    main()\nfinally:\n    print('tensorboard imported:', 'torch.utils.tensorboard' in sys.modules)")
    with isolated(tmp_path_factory):
        run = subprocess.run([sys.executable, "-c", code, *TINY, *DENSE, f"hydra.run.dir={work / 'run'}"], cwd=work,
                             capture_output=True, text=True, env={**cli_env(), "PYTHONPATH": str(ROOT)}, timeout=900)
    return work / "run", run


@dataclass(frozen=True)
class RecordedRun:
    dir: Path
    cfg: dict
    received: list  # every Flower Message that reached the server, in order (launch.recording.RecordingGrid)
    sent: list      # every Flower Message the server sent, in order


@pytest.fixture(scope="session")
def recorded_federated_run(tmp_path_factory):
    """privacy -> a finished real federated simulation (TINY, a validation split, logger=tensorboard) with
    every reply that reached the server recorded; each privacy setting asked for is run once a session,
    and every test that reads a federated run's wire, outputs or tensorboard shares it."""
    from launch.recording import RecordingGrid
    from launch.simulation import run_federated_simulation

    runs: dict[str, RecordedRun] = {}

    def run(privacy: str) -> RecordedRun:
        if privacy not in runs:  # called from a test: isolated_env's cache and Flower home are set
            cfg = to_plain(compose_config([*TINY, f"privacy={privacy}", "data.val_fraction=0.2", "logger=tensorboard"]))
            out = tmp_path_factory.mktemp(f"federated-{privacy}")
            grids: list[RecordingGrid] = []
            run_federated_simulation(cfg, out, grid_view=lambda grid: grids.append(RecordingGrid(grid)) or grids[-1])
            runs[privacy] = RecordedRun(out, cfg, grids[0].received, grids[0].sent)
        return runs[privacy]
    return run


@contextmanager
def flower_log():
    """The messages Flower's logger (`flwr`, which every part of a run logs through) gives while inside:
    what a run prints, for a run in this process."""
    import logging

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep(logging.DEBUG)
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def merchant_files(run_dir: Path) -> dict:
    """merchant -> its rows (a DataFrame) in the run's own data, as the simulation partitioned it."""
    import json

    import pandas as pd

    from data.partition import partition_table, read_manifest

    cfg = json.loads((Path(run_dir) / "metrics.json").read_text())["config"]
    return {p.merchant_id: pd.read_parquet(p.path) for p in read_manifest(partition_table(cfg["data"]))}


def assert_kept_test_metrics(doc: dict) -> None:
    """metrics.json reports its kept model: the kept round's test metrics, except that a head the kept
    model replaced by its prior (prior_heads) scores as at round 0, where every head predicts its prior,
    and a recalibrated head (calibration: a z + b with a > 0, the same order of rows) keeps its AUC;
    biases refitted on the validation rows too (refit_steps > 0: tests/test_refit.py) move every other
    head's metrics."""
    kept = doc["rounds"][doc["selected_round"]]["tasks"]
    assert set(doc["tasks"]) - {"ranking"} == set(kept)
    for task, metrics in kept.items():
        if task in doc["prior_heads"]:
            assert doc["tasks"][task] == doc["rounds"][0]["tasks"][task]
        elif doc["refit_steps"]:
            assert set(doc["tasks"][task]) == set(metrics) and all(math.isfinite(v) for v in doc["tasks"][task].values())
        elif task in doc["calibration"]:
            assert doc["calibration"][task][0] > 0
            if "auc" in metrics:
                assert doc["tasks"][task]["auc"] == pytest.approx(metrics["auc"], abs=2e-3)  # ties may move in float32
        else:
            assert doc["tasks"][task] == metrics
