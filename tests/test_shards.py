"""Splits, and a node preparing its own merchant file: validation, hashing, splitting, caching, summary;
and the simulation's partition step that hands each simulated node its own file."""

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from data.partition import partition_for_node, partition_table, read_manifest
from data.shards import SUMMARY_FILE, merchant_cache_dir, merchant_of_file, prepare_merchant
from data.splits import split_positions
from data.summary import DataSummary


def test_time_split_puts_the_latest_rows_in_test_and_the_next_latest_in_validation():
    stamps = np.array([50, 10, 40, 20, 30, 60, 0, 70, 80, 90])
    train, val, test = split_positions(10, 0.2, 0.25, seed=0, timestamps=stamps)
    assert stamps[test].min() > stamps[val].max() and stamps[val].min() > stamps[train].max()
    assert (len(train), len(val), len(test)) == (6, 2, 2)
    assert sorted(np.concatenate([train, val, test])) == list(range(10))


def test_random_split_is_seeded():
    a = split_positions(100, 0.3, 0.1, seed=1)
    b = split_positions(100, 0.3, 0.1, seed=1)
    c = split_positions(100, 0.3, 0.1, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[2], c[2])
    assert (len(a[0]), len(a[1]), len(a[2])) == (63, 7, 30)
    assert len(set(np.concatenate(a).tolist())) == 100


@pytest.mark.parametrize("n_rows, val_fraction", [(2, 0.5), (50, 0.0)])
def test_no_validation_rows_when_train_is_one_row_or_none_asked(n_rows, val_fraction):
    train, val, test = split_positions(n_rows, 0.2, val_fraction, seed=0)
    assert len(val) == 0 and len(train) + len(test) == n_rows


def write_table(path, merchants=("a",) * 6 + ("b",) * 4, **columns):
    n = len(merchants)
    frame = pd.DataFrame({"merchant_id": list(merchants), "user_id": list(range(n)),
                          "item_id": [f"i{k % 3}" for k in range(n)], "click": [1, 0] * (n // 2) + [1] * (n % 2),
                          **columns})
    frame.to_csv(path, index=False)
    return path


def data_cfg(tiny_cfg, *extra):
    return tiny_cfg(*extra)["data"]


def test_a_node_prepares_its_file_once_and_reports_only_aggregates(tmp_path, tiny_cfg):
    ratings = [5, None, 4, 3, None, 1]
    path = write_table(tmp_path / "a.csv", merchants=("a",) * 6, rating=ratings)
    cfg = data_cfg(tiny_cfg, "data.val_fraction=0.25")
    prepared = prepare_merchant(path, cfg)
    summary = prepared.summary
    assert summary.merchant_id == "a" and summary.label_columns == ["rating", "click"]
    assert summary.rows == {"train": 3, "val": 1, "test": 2}
    train, val, test = (prepared.shard(split) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (3, 1, 2)
    assert summary.labels["train"]["rating"] == int(np.isfinite(train.labels["rating"]).sum())
    known = train.labels["rating"][np.isfinite(train.labels["rating"])].astype(np.float64)
    moments = summary.train_moments["rating"]
    assert (moments.count, moments.total, moments.total_sq) == (len(known), known.sum(), (known ** 2).sum())
    assert summary.train_moments["click"].count == 3  # binary labels too: their mean is the base rate
    # Ids are hashed into their buckets, identically for every process.
    assert train.features.max() < 16384
    # A second preparation reads the cache: nothing is rewritten.
    stamp = (prepared.root / SUMMARY_FILE).stat().st_mtime_ns
    again = prepare_merchant(path, cfg)
    assert again.root == prepared.root and (again.root / SUMMARY_FILE).stat().st_mtime_ns == stamp
    assert not any(p.name.startswith(".staging") for p in prepared.root.parent.iterdir())


def test_the_summary_counts_validation_rows_with_a_value_train_never_saw(tmp_path, tiny_cfg):
    """What model.id_dropout=auto reads: per hashed column, validation rows cold for this merchant."""
    n = 40
    frame = pd.DataFrame({"merchant_id": ["a"] * n, "timestamp": range(n), "click": [1, 0] * (n // 2),
                          # users 0-9 fill train; validation (rows 24-31) brings 4 new ones and 4 known ones
                          "user_id": [k % 10 for k in range(24)] + [100, 101, 102, 103, 1, 2, 3, 4] + [7] * 8,
                          "item_id": ["x"] * n})
    frame.to_csv(tmp_path / "a.csv", index=False)
    prepared = prepare_merchant(tmp_path / "a.csv", data_cfg(tiny_cfg, "data.val_fraction=0.25"))
    assert prepared.summary.rows == {"train": 24, "val": 8, "test": 8}
    assert prepared.summary.cold_val == {"user_id": 4, "item_id": 0}
    train, val = prepared.shard("train"), prepared.shard("val")
    assert int(np.isin(val.features[:, 0], train.features[:, 0], invert=True).sum()) == 4
    assert DataSummary.from_flat(prepared.summary.to_flat()) == prepared.summary


@pytest.mark.parametrize("setting", ["keep", "drop"])
def test_a_binary_label_of_one_class_in_train_counts_as_absent_in_train_and_validation_under_drop(
        tmp_path, tiny_cfg, setting):
    """A shop that never records a purchase in its train rows: under drop its purchase labels train
    nothing and choose nothing, while its clicks (both classes) and its test purchases stay."""
    n = 40
    frame = pd.DataFrame({"merchant_id": ["a"] * n, "timestamp": range(n), "user_id": range(n), "item_id": ["x"] * n,
                          "purchase": [0] * 32 + [1, 0] * 4, "click": [1, 0] * (n // 2)})
    frame.to_csv(tmp_path / "a.csv", index=False)
    prepared = prepare_merchant(tmp_path / "a.csv", data_cfg(tiny_cfg, "data.val_fraction=0.25",
                                                             f"data.one_class_labels={setting}"))
    summary = prepared.summary
    assert summary.rows == {"train": 24, "val": 8, "test": 8}
    train, val, test = (prepared.shard(split) for split in ("train", "val", "test"))
    dropped = setting == "drop"
    assert summary.labels["train"]["purchase"] == (0 if dropped else 24)
    assert summary.labels["val"]["purchase"] == (0 if dropped else 8)
    assert np.isnan(train.labels["purchase"]).all() == dropped and np.isnan(val.labels["purchase"]).all() == dropped
    assert ("purchase" in summary.train_moments) != dropped  # the base rate ignores this merchant's zeros
    np.testing.assert_array_equal(test.labels["purchase"], [1, 0] * 4)  # test is scored as it is
    assert summary.labels["train"]["click"] == 24 and "purchase" in summary.label_columns


def test_one_class_labels_takes_keep_or_drop_only(tmp_path, tiny_cfg):
    path = write_table(tmp_path / "a.csv", merchants=("a",) * 6)
    assert merchant_cache_dir(path, data_cfg(tiny_cfg, "data.one_class_labels=drop"), None) != \
        merchant_cache_dir(path, data_cfg(tiny_cfg, "data.one_class_labels=keep"), None)
    assert data_cfg(tiny_cfg)["one_class_labels"] == "drop"  # the default
    with pytest.raises(InputError, match="data.one_class_labels must be one of keep, drop, got 'dorp'"):
        prepare_merchant(path, data_cfg(tiny_cfg, "data.one_class_labels=dorp"))


def test_cache_follows_the_file_and_the_data_settings(tmp_path, tiny_cfg):
    path = write_table(tmp_path / "a.csv", merchants=("a",) * 6)
    first = merchant_cache_dir(path, data_cfg(tiny_cfg), None)
    assert merchant_cache_dir(path, data_cfg(tiny_cfg, "data.test_fraction=0.3"), None) != first
    write_table(path, merchants=("a",) * 6, purchase=[0] * 6)
    assert merchant_cache_dir(path, data_cfg(tiny_cfg), None) != first


def test_merchant_id_comes_from_the_node_config_or_a_single_valued_column(tmp_path, tiny_cfg):
    path = write_table(tmp_path / "ab.csv")
    with pytest.raises(InputError, match=r"ab.csv: column 'merchant_id' holds 2 merchants \('a', 'b'\)"):
        prepare_merchant(path, data_cfg(tiny_cfg))
    assert prepare_merchant(path, data_cfg(tiny_cfg), merchant_id="m42").summary.rows == {"train": 8, "val": 0,
                                                                                         "test": 2}


def test_a_node_identifies_from_its_merchant_column_alone_and_prepares_nothing(tmp_path, tiny_cfg):
    cfg = data_cfg(tiny_cfg, f"data.cache_dir={tmp_path / 'cache'}")
    path = write_table(tmp_path / "a.csv", merchants=("a",) * 4, purchase=[0, 1, 7, 0])  # a bad label: still "a"
    assert merchant_of_file(path, cfg) == "a" and not (tmp_path / "cache").exists()
    pd.read_csv(path).to_parquet(tmp_path / "a.parquet")
    assert merchant_of_file(tmp_path / "a.parquet", cfg) == "a"
    renamed = tmp_path / "shop.csv"
    pd.read_csv(path).rename(columns={"merchant_id": "shop"}).to_csv(renamed, index=False)
    assert merchant_of_file(renamed, data_cfg(tiny_cfg, "data.columns.merchant_id=shop")) == "a"
    with pytest.raises(InputError, match=r"holds 2 merchants \('a', 'b'\).*set merchant-id in the node config"):
        merchant_of_file(write_table(tmp_path / "ab.csv"), cfg)
    with pytest.raises(InputError, match="no column 'merchant_id' to tell its merchant"):
        merchant_of_file(renamed, cfg)


def test_a_bad_file_is_one_line_naming_file_column_and_row(tmp_path, tiny_cfg):
    path = write_table(tmp_path / "a.csv", merchants=("a",) * 4, purchase=[0, 1, 7, 0])
    with pytest.raises(InputError) as error:
        prepare_merchant(path, data_cfg(tiny_cfg))
    assert str(error.value) == f"{path}: column 'purchase' must be 0 or 1 (or empty); found 7 at row 3 (1 bad value(s))"
    with pytest.raises(InputError, match="data-path: no such file: .*missing.csv"):
        prepare_merchant(tmp_path / "missing.csv", data_cfg(tiny_cfg))


def test_a_merchant_too_small_or_without_labels_is_named(tmp_path, tiny_cfg):
    tiny = write_table(tmp_path / "tiny.csv", merchants=("tiny",))
    with pytest.raises(InputError, match="merchant 'tiny' has 1 row"):
        prepare_merchant(tiny, data_cfg(tiny_cfg))
    with pytest.raises(InputError, match="fewer than data.min_rows_per_merchant=2; it sits this run out"):
        prepare_merchant(tiny, data_cfg(tiny_cfg, "data.min_rows_per_merchant=2"))
    unlabelled = write_table(tmp_path / "b.csv", merchants=("b",) * 2, click=[None, None])
    with pytest.raises(InputError, match="merchant 'b' has no label in any of click"):
        prepare_merchant(unlabelled, data_cfg(tiny_cfg))


def test_partition_writes_one_file_per_merchant_and_maps_partition_ids(tmp_path, tiny_cfg):
    path = write_table(tmp_path / "t.csv", merchants=("b",) * 4 + ("a",) * 5 + ("tiny",))
    with pytest.raises(InputError, match="merchant 'tiny' has 1 row"):
        partition_table(data_cfg(tiny_cfg, "data=table", f"data.path={path}"))
    cfg = data_cfg(tiny_cfg, "data=table", f"data.path={path}", "data.min_rows_per_merchant=2", "data.val_fraction=0")
    manifest = partition_table(cfg)
    partitions = read_manifest(manifest)
    assert [p.merchant_id for p in partitions] == ["a", "b"]  # merchant order; 'tiny' dropped as asked
    assert pd.read_parquet(partitions[1].path)["merchant_id"].tolist() == ["b"] * 4
    assert partition_for_node(manifest, 1, 2) == partitions[1]
    with pytest.raises(InputError, match="3 SuperNodes for 2 merchants.*num-supernodes=2"):
        partition_for_node(manifest, 0, 3)
    # A simulated node prepares its partition's file exactly as a deployed node prepares its own.
    assert prepare_merchant(partitions[0].path, cfg, partitions[0].merchant_id).summary.rows["train"] == 4
