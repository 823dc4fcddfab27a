"""`merchant-fl privacy=dp privacy.noise_multiplier=1.0` on a tiny real simulation: epsilon per round in
metrics.json and the log, and training stops before the round that would pass privacy.target_epsilon."""

import json
import subprocess
import sys

import pytest

from core.privacy import PrivacySettings
from server_app.accounting import PrivacyBudget
from tests.conftest import ROOT, TINY, cli_env

pytestmark = pytest.mark.slow


def test_dp_run_reports_epsilon_every_round_and_stops_at_the_target(tmp_path):
    budget = PrivacyBudget(PrivacySettings("dp", clip_norm=10.0, noise_multiplier=1.0, delta=1e-5))
    expected = [0.0] + [budget.spend(1.0)["epsilon"] for _ in range(3)]  # every merchant trains every round
    target = (expected[2] + expected[3]) / 2  # two rounds fit, the third would pass the target
    out = tmp_path / "run"
    env = {**cli_env(), "PYTHONPATH": str(ROOT)}  # this checkout's code, whatever is installed
    run = subprocess.run([sys.executable, "-m", "launch.cli", *TINY, "privacy=dp", "privacy.noise_multiplier=1.0",
                          "federation.rounds=3", f"privacy.target_epsilon={target}", "ranking.enabled=false",
                          f"hydra.run.dir={out}"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    assert [r["privacy"]["epsilon"] for r in doc["rounds"]] == pytest.approx(expected[:3])
    assert all(r["privacy"]["delta"] == 1e-5 for r in doc["rounds"])
    log = run.stdout + run.stderr
    assert "round 2: privacy spent epsilon=" in log
    assert "training stops after round 2 (privacy.on_target=stop)" in log
