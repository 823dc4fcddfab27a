import json

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from data.shards import cache_dir, load_shard, prepare_shards
from data.splits import split_positions


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


def write_table(path, **columns):
    frame = pd.DataFrame({"merchant_id": ["a"] * 6 + ["b"] * 4, "user_id": list(range(10)),
                          "item_id": [f"i{k % 3}" for k in range(10)],
                          "click": [1, 0, 1, 0, 1, 0, 1, 0, 1, 0], **columns})
    frame.to_csv(path, index=False)
    return path


def table_cfg(tiny_cfg, path, *extra):
    return tiny_cfg("data=table", f"data.path={path}", *extra)["data"]


def test_shards_are_written_once_and_read_per_merchant(tmp_path, tiny_cfg):
    cfg = table_cfg(tiny_cfg, write_table(tmp_path / "t.csv", rating=[5, None, 4, 3, None, 1, 2, 2, None, 5]),
                    "data.val_fraction=0.25")
    index = prepare_shards(cfg)
    assert index.merchant_ids == ["a", "b"] and index.label_columns == ["rating", "click"]
    stamp = (index.root / "index.json").stat().st_mtime_ns
    assert prepare_shards(cfg).root == index.root and (index.root / "index.json").stat().st_mtime_ns == stamp
    a_train, a_val, a_test = (load_shard(index, "a", split) for split in ("train", "val", "test"))
    assert (len(a_train), len(a_val), len(a_test)) == (3, 1, 2) and len(load_shard(index, "b", "test")) == 1
    assert index.merchant("a").n_val == 1 and index.merchant("a").val_labels["click"] == 1
    assert index.merchant("a").train_labels["rating"] == int(np.isfinite(a_train.labels["rating"]).sum())
    assert set(json.loads((index.root / "index.json").read_text())["label_stats"]) == {"rating", "click"}
    # Ids are hashed into their buckets, identically for every process.
    assert a_train.features.max() < max(index.buckets)


def test_cache_follows_the_file(tmp_path, tiny_cfg):
    path = write_table(tmp_path / "t.csv")
    first = cache_dir(table_cfg(tiny_cfg, path))
    write_table(path, purchase=[0] * 10)
    assert cache_dir(table_cfg(tiny_cfg, path)) != first


def test_a_merchant_too_small_to_split_is_named(tmp_path, tiny_cfg):
    path = tmp_path / "t.csv"
    pd.DataFrame({"merchant_id": ["a", "a", "tiny"], "user_id": [1, 2, 3], "item_id": [1, 2, 3],
                  "click": [1, 0, 1]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="merchant 'tiny' has 1 row"):
        prepare_shards(table_cfg(tiny_cfg, path))
    kept = prepare_shards(table_cfg(tiny_cfg, path, "data.min_rows_per_merchant=2"))
    assert kept.merchant_ids == ["a"]
    assert not any(p.name.startswith(".staging") for p in kept.root.parent.iterdir())


def test_a_merchant_without_any_label_is_named(tmp_path, tiny_cfg):
    path = tmp_path / "t.csv"
    pd.DataFrame({"merchant_id": ["a", "a", "b", "b"], "user_id": [1, 2, 3, 4], "item_id": [1, 2, 3, 4],
                  "click": [1, 0, None, None]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="merchant 'b' has no label"):
        prepare_shards(table_cfg(tiny_cfg, path))
    assert not cache_dir(table_cfg(tiny_cfg, path)).exists()
