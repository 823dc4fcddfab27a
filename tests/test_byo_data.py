"""A user's own table: column mapping, bad rows skipped and counted, extra feature columns, silos for
a table without merchants, and merchant-at-a-time reading of Parquet; then one real federated run."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from core.config import compose_config
from core.errors import InputError
from data.features import MISSING, FeatureSpec, feature_columns, pack_numerical, unpack_numerical
from data.partition import ASSIGNMENT_FILE, partition_table, read_manifest
from data.schema import clean_interactions
from data.shards import encode_features, feature_spec, prepare_merchant
from data.silos import dirichlet_silos, iid_silos
from data.summary import pooled_bad_rows
from launch.cli import run as cli_run
from tasks.models import MODELS
from tasks.plan import plan_from_summaries
from tests.conftest import TINY, flower_log


def own_table(n=40, merchants=("a", "b")):
    """A table in a user's own naming: shop, customer, product, stars, bought; plus features."""
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "shop": [merchants[k % len(merchants)] for k in range(n)],
        "customer": [f"u{k % 7}" for k in range(n)],
        "product": [f"p{k % 5}" for k in range(n)],
        "stars": rng.integers(1, 6, n).astype(float),
        "bought": rng.integers(0, 2, n),
        "brand": [None if k % 3 == 0 else f"b{k % 4}" for k in range(n)],
        "price": [None if k % 5 == 0 else float(k) for k in range(n)],
    })


MAPPING = ["data.columns.merchant_id=shop", "data.columns.user_id=customer", "data.columns.item_id=product",
           "data.columns.rating=stars", "data.columns.purchase=bought"]


# --- column mapping ---------------------------------------------------------------------------------

def test_a_table_keeps_its_own_column_names(tmp_path, tiny_cfg):
    path = tmp_path / "t.csv"
    own_table(merchants=("a",)).to_csv(path, index=False)
    prepared = prepare_merchant(path, tiny_cfg("data=table", f"data.path={path}", *MAPPING)["data"])
    assert prepared.summary.merchant_id == "a"
    assert prepared.summary.label_columns == ["rating", "purchase"]
    assert sum(prepared.summary.rows.values()) == 40


def test_a_mapped_column_the_table_lacks_is_named_by_its_original_name(tmp_path, tiny_cfg):
    path = tmp_path / "t.csv"
    own_table().drop(columns="customer").to_csv(path, index=False)
    with pytest.raises(InputError, match=r"t.csv: missing column 'customer' \(data.columns.user_id=customer"):
        partition_table(tiny_cfg("data=table", f"data.path={path}", *MAPPING)["data"])


# --- bad rows ---------------------------------------------------------------------------------------

def bad_table():
    return pd.DataFrame({"merchant_id": ["a"] * 7, "user_id": ["1", "", "3", "4", "5", "6", "7"],
                         "item_id": ["x"] * 7, "click": ["1", "0", "7", "1", "oops", "0", "1"],
                         "timestamp": ["1", "2", "3", "", "5", "6", "7"]})


def test_skip_leaves_out_bad_rows_and_counts_each_once_by_reason():
    out, counts = clean_interactions(bad_table(), "t.csv", on_bad_rows="skip")
    assert out["user_id"].tolist() == ["1", "6", "7"]
    assert counts == {"missing_id": 1, "unparsable_value": 1, "bad_label": 1, "missing_timestamp": 1}


def test_fail_stops_at_the_first_bad_row_as_before():
    with pytest.raises(InputError, match="t.csv: column 'user_id' has 1 empty cell"):
        clean_interactions(bad_table(), "t.csv", on_bad_rows="fail")
    with pytest.raises(InputError, match="every one of its 1 rows is bad"):
        clean_interactions(bad_table().iloc[1:2], "t.csv", on_bad_rows="skip")
    with pytest.raises(InputError, match="data.on_bad_rows must be fail or skip"):
        clean_interactions(bad_table(), "t.csv", on_bad_rows="drop")


def test_each_node_counts_its_own_bad_rows_in_its_summary(tmp_path, tiny_cfg):
    table = pd.concat([bad_table(), bad_table().assign(merchant_id="b"),
                       bad_table().iloc[:1].assign(merchant_id="")])  # one row without a merchant
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    cfg = tiny_cfg("data=table", f"data.path={path}", "data.on_bad_rows=skip", "data.val_fraction=0")["data"]
    manifest = partition_table(cfg)
    assert json.loads(manifest.read_text())["unassigned_bad_rows"] == 1
    summaries = [prepare_merchant(p.path, cfg, p.merchant_id).summary for p in read_manifest(manifest)]
    assert [s.bad_rows for s in summaries] == [{"missing_id": 1, "unparsable_value": 1, "bad_label": 1,
                                                "missing_timestamp": 1}] * 2
    assert pooled_bad_rows(summaries) == {"missing_id": 2, "unparsable_value": 2, "bad_label": 2,
                                          "missing_timestamp": 2}


# --- feature columns --------------------------------------------------------------------------------

def test_numerical_values_survive_the_packed_model_input():
    values = np.array([[1.5, np.nan], [-3.25e7, 0.0]], np.float32)
    packed = pack_numerical(values)
    assert packed.dtype == np.int64
    np.testing.assert_array_equal(unpack_numerical(torch.as_tensor(packed)).numpy(), values)


def test_feature_columns_are_prepared_and_their_moments_pool_to_the_rows_stats(tmp_path, tiny_cfg):
    path = tmp_path / "t.csv"
    table = own_table()
    table.to_csv(path, index=False)
    cfg = tiny_cfg("data=table", f"data.path={path}", *MAPPING, "data.features.categorical=[brand]",
                   "data.features.numerical=[price]", "data.features.bias_only=[merchant_id]",
                   "data.val_fraction=0")["data"]
    merchants = [prepare_merchant(p.path, cfg, p.merchant_id) for p in read_manifest(partition_table(cfg))]
    plan = plan_from_summaries(None, [m.summary for m in merchants])
    trains = [m.shard("train") for m in merchants]
    prices = np.concatenate([unpack_numerical(torch.as_tensor(s.features[:, 3:])).numpy()[:, 0] for s in trains])
    known = prices[np.isfinite(prices)].astype(np.float64)
    assert plan.feature_stats["price"]["count"] == len(known) < len(prices)  # empty cells are missing, not 0
    assert plan.feature_stats["price"]["mean"] == pytest.approx(known.mean())
    assert plan.feature_stats["price"]["std"] == pytest.approx(known.std())
    # An empty brand is one bucket of its own, the same in every merchant.
    from data.shards import hash_ids
    missing_bucket = hash_ids(pd.Series([MISSING]), 65536)[0]
    assert all((s.features[:, 2] == missing_bucket).any() for s in trains)
    # Scoring encodes rows exactly as preparing did.
    rows = clean_interactions(table.rename(columns={"shop": "merchant_id", "customer": "user_id", "product": "item_id",
                                                    "stars": "rating", "bought": "purchase"}), "t", feature_columns(cfg))[0]
    encoded = {tuple(r) for r in encode_features(rows, cfg)}
    assert all({tuple(r) for r in s.features} <= encoded for s in trains)
    as_read = table.rename(columns={"shop": "merchant_id", "customer": "user_id", "product": "item_id"})  # raw cells: None, floats
    np.testing.assert_array_equal(encode_features(as_read, cfg), encode_features(rows, cfg))
    spec = feature_spec(cfg, plan.feature_stats)
    assert spec.buckets == (262144, 262144, 65536) and spec.numerical_mean == (pytest.approx(known.mean()),)
    # The merchant, a bias-only column, comes last: one value per merchant, its id's bucket.
    assert spec.bias_buckets == (4096,) and spec.bias_columns == [4]
    for merchant, shard in zip(merchants, trains):
        assert set(shard.features[:, 4]) == {hash_ids(pd.Series([merchant.merchant_id]), 4096)[0]}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_architecture_reads_numerical_features_through_the_same_constructor(name):
    spec = FeatureSpec((8, 8), (10.0,), (2.0,))
    torch.manual_seed(0)
    model = MODELS[name](spec, ["click", "purchase"], embedding_dim=4)
    with torch.no_grad():
        for weight in model.parameters():  # towers start at zero output: give every weight a value
            weight.normal_(std=0.5)
    ids = torch.tensor([[1, 2], [1, 2], [1, 2]])
    price = torch.as_tensor(pack_numerical(np.array([[10.0], [14.0], [np.nan]])))
    out = model(torch.cat([ids, price], dim=1))
    # At the mean the value adds nothing; away from it, or missing, the prediction changes.
    assert out["click"][0] != out["click"][1] and out["click"][0] != out["click"][2]
    assert torch.isfinite(out["click"]).all()
    assert {"embedding.numerical_mean", "embedding.numerical_std"} <= set(model.state_dict())  # saved with it


# --- silos for a table without merchants ------------------------------------------------------------

def test_iid_silos_are_seeded_and_even():
    a, b = iid_silos(103, 4, seed=1), iid_silos(103, 4, seed=1)
    np.testing.assert_array_equal(a, b)
    assert sorted(np.bincount(a)) == [25, 26, 26, 26]


def test_dirichlet_silos_skew_each_value_more_as_alpha_falls():
    values = np.repeat(np.arange(10), 200)
    def share_of_top_silo(alpha):
        silo = dirichlet_silos(values, 5, alpha, seed=0)
        return np.mean([np.bincount(silo[values == v], minlength=5).max() / 200 for v in range(10)])
    np.testing.assert_array_equal(dirichlet_silos(values, 5, 0.3, 0), dirichlet_silos(values, 5, 0.3, 0))
    assert share_of_top_silo(0.1) > 0.6 and share_of_top_silo(1000.0) < 0.3


def test_a_table_without_merchants_is_split_and_the_split_is_recorded(tmp_path, tiny_cfg):
    path = tmp_path / "t.csv"
    own_table(200).drop(columns="shop").to_csv(path, index=False)
    cfg = tiny_cfg("data=table", f"data.path={path}", *MAPPING[1:], "data.partition=dirichlet",
                   "data.partition_merchants=3", "data.partition_by=item_id", "data.partition_alpha=0.5")["data"]
    manifest = partition_table(cfg)
    doc = json.loads(manifest.read_text())
    assert [m["merchant_id"] for m in doc["merchants"]] == ["silo-000", "silo-001", "silo-002"]
    assert doc["partition"]["partition"] == "dirichlet" and sum(m["rows"] for m in doc["merchants"]) == 200
    assignment = pd.read_parquet(manifest.parent / ASSIGNMENT_FILE)
    assert assignment["row"].tolist() == list(range(200))
    assert assignment["merchant_id"].value_counts().to_dict() == {m["merchant_id"]: m["rows"] for m in doc["merchants"]}
    with pytest.raises(InputError, match="data.partition must be one of"):
        partition_table({**cfg, "partition": "random"})


def test_a_column_can_name_the_merchants(tmp_path, tiny_cfg):
    path = tmp_path / "t.csv"
    own_table(30).assign(country=["es", "fr", "nl"] * 10).to_csv(path, index=False)
    cfg = tiny_cfg("data=table", f"data.path={path}", *MAPPING[1:], "data.partition=column:country")["data"]
    assert [p.merchant_id for p in read_manifest(partition_table(cfg))] == ["es", "fr", "nl"]


# --- Parquet, one merchant at a time ----------------------------------------------------------------

def test_parquet_is_split_merchant_by_merchant_with_the_same_result_as_csv(tmp_path, tiny_cfg):
    table = own_table(60, merchants=("a", "b", "c"))
    table.to_csv(tmp_path / "t.csv", index=False)
    table.to_parquet(tmp_path / "t.parquet", index=False, row_group_size=10)
    files = {}
    for name in ("t.csv", "t.parquet"):
        cfg = tiny_cfg("data=table", f"data.path={tmp_path / name}", *MAPPING, "data.features.numerical=[price]",
                       "data.features.categorical=[brand]", "data.val_fraction=0")["data"]
        files[name] = [prepare_merchant(p.path, cfg, p.merchant_id) for p in read_manifest(partition_table(cfg))]
    for csv, parquet in zip(files["t.csv"], files["t.parquet"]):
        assert csv.summary == parquet.summary
        np.testing.assert_array_equal(csv.shard("train").features, parquet.shard("train").features)


# --- one real federated run -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_a_federated_run_on_an_own_table_reports_bad_rows_and_its_partition(tmp_path):
    rng = np.random.default_rng(1)
    n = 1200
    table = pd.DataFrame({"customer": rng.integers(0, 60, n).astype(str), "product": rng.integers(0, 30, n).astype(str),
                          "bought": rng.integers(0, 2, n).astype(str), "price": rng.normal(50, 10, n).round(2).astype(str),
                          "brand": rng.choice(["x", "y", ""], n)})
    table.loc[[3, 7], "bought"] = "maybe"
    table.loc[[11], "customer"] = ""
    table.to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "run"
    with flower_log() as log:  # through launch.cli.run, what `merchant-fl` runs, in this process
        cli_run(compose_config([*TINY, "data=table", f"data.path={tmp_path / 't.csv'}",
                                "data.columns.user_id=customer", "data.columns.item_id=product",
                                "data.columns.purchase=bought", "data.on_bad_rows=skip", "data.partition=iid",
                                "data.partition_merchants=3", "data.features.categorical=[brand]",
                                "data.features.numerical=[price]", "federation.rounds=1", "ranking.enabled=false"]), out)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["failures"] == [] and doc["bad_rows"] == {"unparsable_value": 2, "missing_id": 1}
    assert any("data, all merchants: 3 bad row(s) skipped: missing_id 1, unparsable_value 2" in line for line in log)
    assert sorted(doc["per_merchant"]) == ["silo-000", "silo-001", "silo-002"]
    assert (out / "partition" / "manifest.json").is_file() and (out / "partition" / ASSIGNMENT_FILE).is_file()
    state = torch.load(out / "model.pt", weights_only=False)["state"]
    assert float(state["embedding.numerical_mean"][0]) == pytest.approx(50, abs=1.5)


@pytest.mark.parametrize("features, message", [
    ({"ids": ["user_id"], "numerical": ["user_id"]}, "names column 'user_id' twice"),
    ({"ids": [], "categorical": []}, "needs at least one id or categorical column"),
    ({"ids": ["user_id"], "dense": ["price"]}, "unknown key(s) dense"),
    ({"ids": ["user_id"], "bias_only": ["user_id"]}, "names column 'user_id' twice"),
    (["user_id", "item_id"], "must be a mapping"),
])
def test_feature_config_errors_are_one_line(features, message):
    from data.features import feature_columns
    with pytest.raises(InputError, match=re.escape(message)):
        feature_columns({"features": features})


def test_a_missing_column_error_lists_every_column_of_the_file_though_only_some_are_read(tmp_path, tiny_cfg):
    path = tmp_path / "t.csv"
    own_table().to_csv(path, index=False)
    with pytest.raises(InputError, match=r"missing required column 'merchant_id' \(columns found: shop, customer, "
                                         r"product, stars, bought, brand, price\); name yours with data.columns"):
        partition_table(tiny_cfg("data=table", f"data.path={path}")["data"])
