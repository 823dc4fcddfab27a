"""The server's side of setup as plain functions: pooling the nodes' aggregates into label statistics
and the task list, and keeping track of which node is which merchant."""

import numpy as np
import pytest

from core.errors import InputError
from data.summary import DataSummary, LabelMoments, pooled_label_stats
from server_app.federated import wait_for_nodes
from server_app.roster import Roster
from tasks.experiment import experiment_for
from tasks.plan import RunPlan, plan_from_summaries


def summary(merchant, **labels):
    """A merchant's summary from its train labels per column (NaN = no label)."""
    moments = {c: LabelMoments.of(np.array(v, float)) for c, v in labels.items()}
    columns = [c for c, m in moments.items() if m.count]
    counts = {c: m.count for c, m in moments.items()}
    return DataSummary(merchant, columns, {"train": 10, "val": 0, "test": 2},
                       {"train": counts, "val": {}, "test": {}}, moments)


def test_pooled_mean_and_std_equal_numpy_over_the_pooled_rows():
    rng = np.random.default_rng(0)
    parts = [rng.normal(3.5, 1.2, n) for n in (5, 400, 37)]
    parts[1][::3] = np.nan  # rows without a rating
    clicks = [rng.integers(0, 2, n).astype(float) for n in (5, 400, 37)]
    stats = pooled_label_stats([summary(f"m{k}", rating=r, click=c) for k, (r, c) in enumerate(zip(parts, clicks))])
    pooled = np.concatenate(parts)
    pooled = pooled[np.isfinite(pooled)]
    assert set(stats) == {"rating", "click"} and set(stats["rating"]) == {"mean", "std", "count"}
    assert stats["rating"]["count"] == len(pooled)
    assert stats["rating"]["mean"] == pytest.approx(pooled.mean(), rel=1e-12)
    assert stats["rating"]["std"] == pytest.approx(pooled.std(ddof=0), rel=1e-10)
    assert stats["click"]["mean"] == pytest.approx(np.concatenate(clicks).mean(), rel=1e-12)  # the base rate


def test_a_summary_travels_as_a_flat_record_and_back():
    original = summary("m7", rating=[1.0, 5.0, np.nan], purchase=[0.0, 1.0, 1.0])
    flat = original.to_flat()
    assert all(isinstance(v, (int, float, str, list)) for v in flat.values())
    assert DataSummary.from_flat(flat) == original


def test_task_list_follows_the_registry_rules_over_every_nodes_labels():
    nodes = [summary("a", click=[1, 0]), summary("b", rating=[4.0, 2.0], click=[np.nan, 1])]
    plan = plan_from_summaries(None, nodes)
    assert plan.tasks == ["rating", "click"]  # registry order, every label some node has
    assert plan.label_stats["rating"] == {"mean": 3.0, "std": 1.0, "count": 2}
    assert plan_from_summaries(["click", "click"], nodes).tasks == ["click"]
    with pytest.raises(InputError, match="task 'purchase' asked for, but the data has no 'purchase' labels"):
        plan_from_summaries(["purchase"], nodes)
    with pytest.raises(InputError, match="unknown task 'views'"):
        plan_from_summaries(["views"], nodes)
    with pytest.raises(InputError, match="the data has labels for none of the tasks"):
        plan_from_summaries(None, [summary("c")])


def test_the_plan_builds_the_same_model_on_every_side(tiny_cfg):
    plan = plan_from_summaries(None, [summary("a", rating=[4.0, 2.0], click=[1, 0])])
    received = RunPlan.from_json(plan.to_json())
    assert received == plan
    server, node = experiment_for(tiny_cfg(), plan), experiment_for(tiny_cfg(), received)
    assert [(t.name, t.center, t.scale) for t in server.tasks] == [("rating", 3.0, 1.0), ("click", 0.0, 1.0)]
    assert server.tasks == node.tasks
    assert all((a == b).all() for a, b in zip(server.new_model().state_dict().values(),
                                              node.new_model().state_dict().values()))


def test_roster_orders_the_first_merchants_and_replaces_a_restarted_node():
    roster = Roster()
    roster.identify([(30, "m1"), (10, "m2"), (20, "m0")])
    assert roster.identified([10, 20, 30]) == {10: 2, 20: 0, 30: 1}  # indices follow merchant ids
    assert roster.usable(roster.identified([10, 20, 30])) == {} and roster.unprepared([10, 30]) == [10, 30]  # none set up yet
    roster.admit([(30, summary("m1", click=[1])), (10, summary("m2", click=[1])), (20, summary("m0", click=[1]))])
    assert roster.usable(roster.identified([10, 20, 30])) == {10: 2, 20: 0, 30: 1} and roster.unprepared([10, 30]) == []
    roster.refuse(40)
    assert roster.newcomers([10, 20, 30, 40, 50]) == [50]
    roster.identify([(50, "m1")])  # m1's SuperNode came back with a new node id: set it up again
    assert roster.identified([10, 20, 50]) == {10: 2, 20: 0, 50: 1} and roster.merchant(30) is None
    assert roster.unprepared([50]) == [50] and roster.usable(roster.identified([10, 20, 50])) == {10: 2, 20: 0}
    roster.admit([(50, summary("m1", click=[1]))])
    assert roster.usable(roster.identified([10, 20, 50])) == {10: 2, 20: 0, 50: 1}
    assert roster.usable(roster.identified([20])) == {20: 0}  # a node that left is not addressed
    assert roster.newcomers([10, 20]) == [] and roster.merchant(50) is None  # ... and is forgotten
    assert roster.newcomers([10, 20, 40, 50]) == [40, 50]  # so it is asked again when it is back
    roster.identify([(50, "m1")])
    assert roster.identified([10, 20, 50]) == {10: 2, 20: 0, 50: 1}  # with its merchant's index
    roster.refuse(10)  # its set-up failed: it keeps its place in the draw but is not addressed
    assert roster.identified([10, 20]) == {10: 2, 20: 0} and roster.usable({10: 2, 20: 0}) == {20: 0}


class GridWithNodes:
    """Only what waiting reads of a grid: the connected node ids."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


def test_the_server_starts_at_min_nodes_and_times_out_with_a_clear_error():
    assert wait_for_nodes(GridWithNodes([1, 2, 3]), 2, 0.1) == [1, 2, 3]
    with pytest.raises(InputError, match=r"1 SuperNode\(s\) connected after 0 s, fewer than federation.min_nodes=2"):
        wait_for_nodes(GridWithNodes([7]), 2, 0.1)


def test_cold_shares_pool_every_merchants_validation_rows_and_set_id_dropout_alike(tiny_cfg):
    def with_cold(merchant, val_rows, cold):
        base = summary(merchant, click=[1, 0])
        return DataSummary(base.merchant_id, base.label_columns, {**base.rows, "val": val_rows}, base.labels,
                           base.train_moments, cold_val=cold)
    nodes = [with_cold("a", 30, {"user_id": 18, "item_id": 3}), with_cold("b", 10, {"user_id": 6, "item_id": 1})]
    plan = plan_from_summaries(None, nodes)
    assert plan.cold_shares == {"item_id": 0.1, "user_id": 0.6}  # 24 of 40 validation rows: not a mean of shares
    received = RunPlan.from_json(plan.to_json())
    server, node = experiment_for(tiny_cfg(), plan), experiment_for(tiny_cfg(), received)
    assert server.id_dropout == node.id_dropout == [0.5, 0.0]  # user_id cold often (capped at 0.5), item_id not
    assert server.new_model().embedding.id_dropout.tolist() == [0.5, 0.0]
    assert experiment_for(tiny_cfg("model.id_dropout=0.1"), plan).id_dropout == 0.1
    # A plan written before cold shares existed (a checkpoint, a saved run) reads as none known.
    old = RunPlan.from_json('{"tasks": ["click"], "label_stats": {}}')
    assert old.cold_shares == {} and experiment_for(tiny_cfg(), old).id_dropout == 0.0
