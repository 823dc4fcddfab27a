"""Door 1: `flwr run .` in local simulation, with a real (detached) SuperLink, then stopped."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.slow


def superlink_pids(flwr_home: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"flower-superlink.*{flwr_home}"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def test_flwr_run_simulation_uses_the_hydra_config(tmp_path):
    env = cli_env()
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    out = tmp_path / "out"
    overrides = ("data.synthetic.n_merchants=3 data.synthetic.n_rows=2000 data.synthetic.n_users=300 "
                 "data.synthetic.n_items=100 federation.rounds=1 tasks=[click,purchase]")
    try:
        run = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream",
             "--run-config", f'overrides="{overrides}" output-dir="{out}"',
             "--federation-config", "num-supernodes=3"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        for pid in superlink_pids(tmp_path / "flwr-home"):
            os.kill(pid, signal.SIGTERM)
    assert (out / "metrics.json").exists(), run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((out / "metrics.json").read_text())
    # Without ratings the click head is the one ranked (final round only).
    assert doc["mode"] == "federated" and set(doc["tasks"]) == {"purchase", "click", "ranking"}
    assert len(doc["per_merchant"]) == 3 and [r["round"] for r in doc["rounds"]] == [0, 1]
    assert doc["config"]["data"]["synthetic"]["n_merchants"] == 3
    assert "[tool.flwr.federations]" not in (ROOT / "pyproject.toml").read_text()
