"""Set-up grows with the merchants the rounds use: a real simulation of 30 tiny merchants, 3 trained
and 3 evaluated per round, prepares exactly the drawn merchants' data; the draw is the seeded one
(by merchant index, whatever Flower's node ids); the cohort functions as plain functions."""

import json

import pytest

from core.config import compose_config, to_plain
from data.partition import partition_table, read_manifest
from launch.recording import RecordingGrid
from launch.simulation import SimulatedNodes, pending_only_dispatch, run_federated_simulation
from server_app.cohorts import evaluation_cohort, evaluation_order, train_cohort

SMALL = ["data.synthetic.n_merchants=30", "data.synthetic.n_rows=6000", "data.synthetic.n_users=300",
         "data.synthetic.n_items=100", "data.hash_buckets.user_id=512", "data.hash_buckets.item_id=512",
         "model.tower_dims=[8]", "model.embedding_dim=8", "federation.rounds=2", "federation.clients_per_round=3",
         "federation.clients_per_evaluation=3", "ranking.enabled=false", "device=cpu"]


def test_the_evaluation_cohort_is_a_fixed_seeded_order_that_passes_over_failed_nodes():
    nodes = {100 + i: i for i in range(20)}  # node id -> merchant index
    cohort = evaluation_cohort(nodes, 1.0, 5, seed=0)
    order = evaluation_order(range(20), 0)
    assert sorted(cohort.values()) == sorted(order[:5]) and order != sorted(order)
    assert evaluation_cohort(dict(reversed(list(nodes.items()))), 1.0, 5, seed=0) == cohort  # whatever the node order
    assert evaluation_cohort(nodes, 1.0, 5, seed=1) != cohort
    failed = next(n for n, i in nodes.items() if i == order[0])
    assert sorted(evaluation_cohort(nodes, 1.0, 5, seed=0, skip=[failed]).values()) == sorted(order[1:6])
    assert evaluation_cohort(nodes, 0.25, None, seed=0) == cohort  # a fraction: 5 of 20
    assert evaluation_cohort(nodes, 1.0, None, seed=0) == nodes  # the default: everyone
    # Training draws by merchant index, so other node ids draw the same merchants.
    other_ids = {7000 - 3 * i: i for i in range(20)}
    assert sorted(train_cohort(nodes, 1.0, 4, 0, 2).values()) == sorted(train_cohort(other_ids, 1.0, 4, 0, 2).values())


def test_the_simulation_engine_hooks_take_on_this_flower_version():
    """launch/simulation.py adjusts two functions of Flower's simulation engine (which partition each
    node got; dispatch to nodes with a message only); without them a run still works, just slowly."""
    from flwr.server.superlink.fleet.vce import vce_api
    original = vce_api.add_messages_to_queue, vce_api._register_nodes
    with SimulatedNodes(["m0"]).recording() as directory, pending_only_dispatch() as adjusted:
        assert adjusted and directory.hooked
        assert (vce_api.add_messages_to_queue, vce_api._register_nodes) != original
    assert (vce_api.add_messages_to_queue, vce_api._register_nodes) == original


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_only_the_drawn_merchants_are_set_up_and_their_data_prepared(tmp_path):
    cfg = to_plain(compose_config([*SMALL, f"data.cache_dir={tmp_path / 'cache'}"]))
    merchants = [p.merchant_id for p in read_manifest(partition_table(cfg["data"]))]
    assert len(merchants) == 30
    recorder = {}

    def record(grid):
        recorder["grid"] = RecordingGrid(grid)
        return recorder["grid"]

    run_federated_simulation(cfg, tmp_path / "run", grid_view=record)

    everyone = {i: i for i in range(30)}  # merchant index = manifest order (merchant ids sorted)
    trained = {merchants[i] for r in (1, 2) for i in train_cohort(everyone, 1.0, 3, 0, r).values()}
    evaluated = {merchants[i] for i in evaluation_cohort(everyone, 1.0, 3, 0).values()}
    prepared = {json.loads(summary.read_text())["merchant-id"]
                for summary in (tmp_path / "cache" / "merchants").glob("*/summary.json")}
    assert prepared == trained | evaluated and len(prepared) < 30
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert doc["failures"] == [] and set(doc["per_merchant"]) == evaluated
    assert set(doc["merchant_train_rows"]) == prepared  # the server learnt only their aggregates
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    # Who is who came from the simulation's directory, not a query per node; set-up queries went to
    # the prepared merchants alone.
    kinds = [e.message_type for e in recorder["grid"].exchanges]
    assert "query.identify" not in kinds
    setup_replies = [m for m in recorder["grid"].received if "setup" in m.content.config_records]
    assert len(setup_replies) == len(prepared)
