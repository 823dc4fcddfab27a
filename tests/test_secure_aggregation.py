"""privacy=secagg on a real simulation: Flower's SecAgg+ round gives the same multi-task average as the
plain round (up to its quantization) while no merchant's update reaches the server as an array."""

import json

import numpy as np
import pytest
from flwr.app import MessageType

from launch.recording import RecordingGrid
from launch.simulation import run_federated_simulation

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]


def test_secure_aggregation_gives_the_plain_multitask_average(tmp_path, tiny_cfg):
    common = ["federation.rounds=1", "ranking.enabled=false"]
    plain = run_federated_simulation(
        tiny_cfg("train.first_order_fit=sgd", "federation.table_aggregation=dense", *common), tmp_path / "plain")
    grids = []
    secure = run_federated_simulation(tiny_cfg("privacy=secagg", *common), tmp_path / "secure",
                                      grid_view=lambda grid: grids.append(RecordingGrid(grid)) or grids[-1])
    for name, value in plain.model_state.items():
        np.testing.assert_allclose(secure.model_state[name].numpy(), value.numpy(), atol=1e-3, err_msg=name)
    assert secure.model_state["towers.click.3.weight"].numpy().tolist() != \
        plain.model_state["towers.click.3.weight"].numpy().tolist()  # it did go through quantization
    train = [m for m in grids[0].received if m.metadata.message_type == MessageType.TRAIN]
    assert len(train) == 4 * 4  # SecAgg+'s four stages, four merchants
    for reply in train:  # the masked vector travels as bytes; no array record holds anything
        assert not reply.has_error()
        assert all(len(record) == 0 for record in reply.content.array_records.values())


def test_a_merchant_that_drops_out_of_a_secure_round_is_listed_and_the_round_goes_on(tmp_path, tiny_cfg):
    from tests.faulty_clients import fault_mod
    result = run_federated_simulation(tiny_cfg("privacy=secagg", "federation.rounds=1", "ranking.enabled=false"),
                                      tmp_path / "run", [fault_mod({1: "drop_masked"})])
    dropped = [f for f in result.failures if f["round"] == 1]
    assert len(dropped) == 1 and dropped[0]["merchant"] == "m01", result.failures
    assert "SecAgg+" in dropped[0]["reason"]
    assert [r["round"] for r in json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]] == [0, 1]
