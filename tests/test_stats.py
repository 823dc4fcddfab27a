"""data/stats.py: the statistics on a tiny hand-made table with known answers, and the tool's door."""

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from data.stats import (describe, label_stats, main, one_class_merchants, split_parts, split_stats, stats_for_config,
                        table_stats)
from data.synthetic import PlatformSpec, generate_platform
from tasks.experiment import open_experiment, prepare_every_merchant

NAN = float("nan")


def tiny_table() -> pd.DataFrame:
    """Two merchants of 5 rows; with test_fraction 0.2 each merchant's latest row is its test row.

    A's test row (u3, i3) has a user and an item seen nowhere in train; B's test row (u2, i2) has a
    user and an item seen in A's train but not in B's.
    """
    rows = [  # merchant, user, item, timestamp, rating, purchase
        ("A", "u1", "i1", 10, 5, 0), ("A", "u1", "i2", 20, 4, 0), ("A", "u2", "i1", 30, NAN, 0),
        ("A", "u2", "i2", 40, 2, 0), ("A", "u3", "i3", 50, 5, 0),
        ("B", "u1", "i1", 5, NAN, 0), ("B", "u4", "i4", 4, NAN, 1), ("B", "u4", "i1", 3, NAN, 0),
        ("B", "u5", "i4", 2, NAN, 0), ("B", "u2", "i2", 9, NAN, 1),
    ]
    return pd.DataFrame(rows, columns=["merchant_id", "user_id", "item_id", "timestamp", "rating", "purchase"])


def test_split_parts_holds_out_each_merchants_latest_rows():
    parts = split_parts(tiny_table(), test_fraction=0.2)
    assert list(np.flatnonzero(parts == "test")) == [4, 9]
    assert (parts[[0, 1, 2, 3, 5, 6, 7, 8]] == "train").all()


def test_table_stats_known_answers():
    t = table_stats(tiny_table())
    assert (t["rows"], t["merchants"], t["users"], t["items"]) == (10, 2, 5, 4)
    assert t["user_median"] == 2 and t["user_mean"] == 2.0       # u1 3, u2 3, u3 1, u4 2, u5 1
    assert t["item_median"] == 2.5 and t["item_mean"] == 2.5     # i1 4, i2 3, i3 1, i4 2
    assert t["largest_merchant_share"] == 0.5 and t["smallest_merchant_rows"] == 5
    assert t["merchants_under_200"] == 2


def test_split_stats_known_answers():
    df = tiny_table()
    s = split_stats(df, split_parts(df, 0.2))
    assert (s["train_rows"], s["val_rows"], s["test_rows"]) == (8, 0, 2)
    assert s["test_unseen_user"] == 0.5 and s["test_unseen_item"] == 0.5            # A's test row only
    assert s["test_unseen_user_in_merchant"] == 1.0 and s["test_unseen_item_in_merchant"] == 1.0


def test_the_test_rows_whose_id_first_appears_in_validation_are_counted():
    """What refit_biases has to work with: A's validation row now has A's test user (u3), first seen there."""
    df = tiny_table()
    df.loc[3, "user_id"] = "u3"  # A's second-latest row: its validation row under val_fraction 0.25
    s = split_stats(df, split_parts(df, 0.2, 0.25))
    assert (s["train_rows"], s["val_rows"], s["test_rows"]) == (6, 2, 2)
    assert s["test_user_first_in_val"] == 0.5 and s["test_item_first_in_val"] == 0.0  # A's u3; i3 seen nowhere


def test_label_stats_known_answers():
    df = tiny_table()
    labels = label_stats(df, split_parts(df, 0.2))
    rating, purchase = labels["rating"], labels["purchase"]
    assert rating["labelled_share"] == pytest.approx(0.4)
    assert rating["top_share"] == 0.75 and rating["five_share"] == 0.5               # 5, 4, 2, 5
    assert rating["train_mean"] == pytest.approx(11 / 3) and rating["test_mean"] == 5
    assert purchase["labelled_share"] == 1.0 and purchase["mean"] == pytest.approx(0.2)
    assert purchase["train_mean"] == pytest.approx(1 / 8) and purchase["test_mean"] == 0.5
    assert purchase["one_class_merchants"] == {"A": 0.0}
    assert "click" not in labels


def test_one_class_merchants_ignores_missing_labels():
    df = pd.DataFrame({"merchant_id": ["A", "A", "B", "B", "C"], "click": [1, NAN, 0, 1, NAN]})
    assert one_class_merchants(df, "click") == {"A": 1.0}


def test_split_without_timestamps_and_dropped_merchants():
    df = tiny_table().drop(columns="timestamp")
    df = pd.concat([df, pd.DataFrame([("C", "u9", "i9", 3, 1)], columns=["merchant_id", "user_id", "item_id",
                                                                          "rating", "purchase"])])
    with pytest.raises(InputError, match="merchant 'C' has 1 row"):
        split_parts(df, 0.2)
    parts = split_parts(df, 0.2, min_rows_per_merchant=2)
    assert parts[-1] == "dropped" and (parts[:10] != "dropped").all() and (parts == "test").sum() == 2
    assert describe(df, 0.2, min_rows_per_merchant=2)["table"]["rows"] == 10


def test_the_validation_cold_shares_are_what_id_dropout_auto_reads(tiny_cfg):
    """The tool's validation shares equal the run plan's, which the nodes count on hashed ids."""
    cfg = tiny_cfg("data=synthetic_coldstart", "data.synthetic.n_rows=6000", "data.synthetic.n_users=1500",
                   "data.synthetic.n_items=600")
    split = stats_for_config(cfg["data"])["split"]
    plan = open_experiment(cfg).plan
    assert 0.2 < split["val_unseen_user_in_merchant"] < 1  # a cold-start table: auto will drop users
    # up to ids that hash into a bucket a trained id holds (a few rows in a thousand here)
    assert plan.cold_shares["user_id"] == pytest.approx(split["val_unseen_user_in_merchant"], abs=0.005)
    assert plan.cold_shares["item_id"] == pytest.approx(split["val_unseen_item_in_merchant"], abs=0.005)


def test_split_matches_the_shards(tiny_cfg):
    """The tool cuts exactly the split the shards are written with (val carved from train too)."""
    data_cfg = tiny_cfg("data.val_fraction=0.1")["data"]
    index = prepare_every_merchant(data_cfg)
    df = generate_platform(PlatformSpec(**data_cfg["synthetic"]))
    parts = split_parts(df, data_cfg["test_fraction"], data_cfg["val_fraction"], data_cfg["split_seed"])
    for entry in index.merchants:
        mine = parts[(df["merchant_id"] == entry.merchant_id).to_numpy()]
        assert ((mine == "train").sum(), (mine == "val").sum(), (mine == "test").sum()) == \
            (entry.summary.rows["train"], entry.summary.rows["val"], entry.summary.rows["test"])


def test_main_on_a_table_and_on_a_preset(tmp_path, capsys):
    path = tmp_path / "t.csv"
    tiny_table().to_csv(path, index=False)
    assert main(["data=table", f"data.path={path}"]) == 0
    out = capsys.readouterr().out
    assert "rows 10   merchants 2   users 5   items 4" in out
    assert "test rows whose user is unseen in train: 50.0 % (in that merchant's train: 100.0 %)" in out
    assert "merchants all one class: 1 (A=0)" in out
    assert "validation rows whose user / item is unseen in that merchant's train: 50.0 % / 0.0 %" in out
    assert main(["data=synthetic_coldstart", "data.synthetic.n_rows=20000", "data.synthetic.n_users=5000",
                 "data.synthetic.n_items=2000"]) == 0
    assert "merchants 15" in capsys.readouterr().out
    assert main(["data=table", f"data.path={tmp_path / 'missing.csv'}"]) == 2
    assert "stats: error:" in capsys.readouterr().err
