"""`merchant-fl privacy=dp privacy.noise_multiplier=1.0` on a tiny real simulation: epsilon per round in
metrics.json and the log, and training stops before the round that would pass privacy.target_epsilon."""

import json

import pytest

from core.config import compose_config
from core.privacy import PrivacySettings
from launch.cli import run as cli_run
from server_app.accounting import PrivacyBudget
from tests.conftest import TINY, flower_log

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]


def test_dp_run_reports_epsilon_every_round_and_stops_at_the_target(tmp_path):
    """Through launch.cli.run, what `merchant-fl` runs, in this process."""
    budget = PrivacyBudget(PrivacySettings("dp", clip_norm=10.0, noise_multiplier=1.0, delta=1e-5))
    expected = [0.0] + [budget.spend(1.0)["epsilon"] for _ in range(3)]  # every merchant trains every round
    target = (expected[2] + expected[3]) / 2  # two rounds fit, the third would pass the target
    out = tmp_path / "run"
    with flower_log() as log:
        cli_run(compose_config([*TINY, "privacy=dp", "privacy.noise_multiplier=1.0", "federation.rounds=3",
                                f"privacy.target_epsilon={target}", "ranking.enabled=false"]), out)
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    assert [r["privacy"]["epsilon"] for r in doc["rounds"]] == pytest.approx(expected[:3])
    assert all(r["privacy"]["delta"] == 1e-5 for r in doc["rounds"])
    assert any("round 2: privacy spent epsilon=" in line for line in log)
    assert any("training stops after round 2 (privacy.on_target=stop)" in line for line in log)
