import hashlib

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core.config import compose_config, to_plain
from data.stats import describe, split_parts
from data.synthetic import PlatformSpec, generate_platform, merchant_sizes

SPEC = PlatformSpec(n_merchants=10, n_rows=20_000, n_users=1500, n_items=600, seed=3)


def test_generator_is_deterministic():
    pd.testing.assert_frame_equal(generate_platform(SPEC), generate_platform(SPEC))
    other = generate_platform(PlatformSpec(**{**SPEC.__dict__, "seed": 4}))
    assert not other["user_id"].equals(generate_platform(SPEC)["user_id"])


def test_platform_looks_like_a_marketplace():
    df = generate_platform(SPEC)
    sizes = df.groupby("merchant_id").size().sort_values(ascending=False)
    assert len(sizes) == 10 and sizes.sum() == 20_000
    assert sizes.iloc[0] > 8 * sizes.iloc[-1]                    # long tail
    assert 0.01 < df["purchase"].mean() < 0.08                     # purchase: a few percent
    assert df["click"].mean() > 2 * df["purchase"].mean()
    assert (df.loc[df["purchase"] == 1, "click"] == 1).all()       # purchase only after click
    rated = df.groupby("merchant_id")["rating"].count()
    assert (rated == 0).sum() == 3 and (rated > 0).sum() == 7      # some merchants collect no ratings
    assert set(df["rating"].dropna().unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    users = df.groupby("merchant_id")["user_id"].apply(set)
    big, second = users[sizes.index[0]], users[sizes.index[1]]
    assert big & second and big != second                          # overlapping, not identical


def test_ground_truth_is_consistent_with_labels():
    df = generate_platform(SPEC)
    assert (df["true_p_purchase"] <= df["true_p_click"] + 1e-7).all()
    assert abs(df["true_p_click"].mean() - df["click"].mean()) < 0.01
    rated = df.dropna(subset=["rating"])
    assert abs(rated["true_rating_mean"].mean() - rated["rating"].mean()) < 0.05
    assert np.isnan(df.loc[df["rating"].isna(), "true_rating_mean"]).all()


# --- the default table and the presets for real-looking data (README, Data) ---------------------

# Computed from the generator before the real-looking knobs were added: their defaults must not
# change a single value of the default table (nor of the first 60k default, nor of SPEC above).
DEFAULT_TABLE_SHA256 = "530cfaee22a7ab718b37267cb278f4d6b581750d823061013324ea8cb3c93a67"
DEFAULT_60K_SHA256 = "fdc57435928c02eae325558934e2dc1a5012b940077a7b75faeb5f588466e238"
SPEC_SHA256 = "4f52b8cb575d222808243c7a2e9504cfb1c206218ae2c6bc194db0fb0284f95c"


def table_hash(df: pd.DataFrame) -> str:
    """Of every column the generator has always written (the item `category` came later, from a draw
    the generator already made, so it changes no other cell)."""
    df = df.drop(columns="category")
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=True).to_numpy().tobytes()).hexdigest()


def preset_spec(name: str) -> PlatformSpec:
    return PlatformSpec(**to_plain(compose_config([f"data={name}"]))["data"]["synthetic"])


def test_default_table_is_unchanged_by_the_new_knobs():
    default = generate_platform()
    assert default.shape == (240_000, 11) and default["merchant_id"].nunique() == 20
    assert (default.groupby("item_id")["category"].nunique() == 1).all()   # an item has one category
    assert table_hash(default) == DEFAULT_TABLE_SHA256
    assert table_hash(generate_platform(PlatformSpec(**to_plain(compose_config([]))["data"]["synthetic"]))) \
        == DEFAULT_TABLE_SHA256                                    # data=synthetic is that default
    assert table_hash(generate_platform(SPEC)) == SPEC_SHA256


def test_synthetic_60k_is_the_first_default():
    assert preset_spec("synthetic_60k") == PlatformSpec(n_rows=60_000)
    assert table_hash(generate_platform(preset_spec("synthetic_60k"))) == DEFAULT_60K_SHA256


def test_synthetic_sparse_hits_its_targets():
    df = generate_platform(preset_spec("synthetic_sparse"))      # 60k rows: well under a second
    stats = describe(df, test_fraction=0.2)
    t, labels = stats["table"], stats["labels"]
    assert 50_000 <= t["rows"] <= 100_000 and 10 <= t["merchants"] <= 20
    assert 2 <= t["user_median"] <= 5
    assert 0.7 <= t["largest_merchant_share"] <= 0.8 and t["merchants_under_200"] >= 3
    rating, purchase, click = labels["rating"], labels["purchase"], labels["click"]
    assert 0.8 <= rating["top_share"] <= 0.9 and rating["five_share"] > 0.5
    assert 0.02 <= purchase["mean"] <= 0.03
    assert len(purchase["one_class_merchants"]) >= 2 and set(purchase["one_class_merchants"].values()) == {0.0}
    # Base rates drift: the latest-rows test split has clearly lower rates than train.
    assert purchase["test_mean"] < 0.8 * purchase["train_mean"]
    assert click["test_mean"] < 0.85 * click["train_mean"]
    assert rating["test_mean"] < rating["train_mean"] - 0.1


def test_synthetic_coldstart_hits_its_targets():
    df = generate_platform(preset_spec("synthetic_coldstart"))   # 80k rows: under a second
    stats = describe(df, test_fraction=0.2, val_fraction=0.1)     # the preset's own split
    t, s, labels = stats["table"], stats["split"], stats["labels"]
    assert 50_000 <= t["rows"] <= 100_000 and 10 <= t["merchants"] <= 20
    assert 0.70 <= s["test_unseen_user"] <= 0.85
    assert 0.70 <= s["test_unseen_item"] <= 0.85
    assert 0.7 <= t["largest_merchant_share"] <= 0.8 and t["merchants_under_200"] >= 3
    assert 0.8 <= labels["rating"]["top_share"] <= 0.9 and labels["rating"]["five_share"] > 0.5
    assert 0.015 <= labels["purchase"]["mean"] <= 0.035


def test_synthetic_events_is_the_coldstart_log_without_its_ratings():
    """An event log (clicks and purchases only): the same rows and binary labels as synthetic_coldstart."""
    events, coldstart = generate_platform(preset_spec("synthetic_events")), generate_platform(preset_spec("synthetic_coldstart"))
    assert events["rating"].isna().all() and coldstart["rating"].notna().mean() > 0.3
    pd.testing.assert_frame_equal(events.drop(columns=["rating", "true_rating_mean"]),
                                  coldstart.drop(columns=["rating", "true_rating_mean"]))
    assert set(describe(events, test_fraction=0.2, val_fraction=0.1)["labels"]) == {"purchase", "click"}


def test_default_split_has_no_cold_start():
    stats = describe(generate_platform(SPEC), test_fraction=0.2)
    assert stats["split"]["test_unseen_user"] < 0.05 and stats["split"]["test_unseen_item"] < 0.01


@pytest.mark.parametrize("name", ["synthetic_sparse", "synthetic_coldstart"])
def test_preset_oracle_matches_the_drawn_labels(name):
    """Drift, skew and merchants without purchases are in the oracle columns too, in train and in test."""
    df = generate_platform(preset_spec(name))
    parts = split_parts(df, 0.2)
    for part in ("train", "test"):
        rows = df[parts == part]
        assert abs(rows["true_p_click"].mean() - rows["click"].mean()) < 0.01
        assert abs(rows["true_p_purchase"].mean() - rows["purchase"].mean()) < 0.005
        rated = rows.dropna(subset=["rating"])
        assert abs(rated["true_rating_mean"].mean() - rated["rating"].mean()) < 0.05
    never = df.groupby("merchant_id")["purchase"].max() == 0
    assert never.any()
    assert (df.loc[df["merchant_id"].isin(never.index[never]), "true_p_purchase"] == 0).all()
    assert (df["true_p_purchase"] <= df["true_p_click"] + 1e-7).all()
    # The signal is learnable: the oracle ranks test rows far better than a constant.
    test = df[parts == "test"]
    assert roc_auc_score(test["click"], test["true_p_click"]) > 0.75


def test_dominant_share_and_arrivals():
    spec = PlatformSpec(n_merchants=6, n_rows=10_000, n_users=3000, n_items=1500, dominant_share=0.7,
                        min_merchant_rows=50, new_user_fraction=1.0, user_lifetime=0.1, new_item_fraction=0.5,
                        item_lifetime=0.2, seed=5)
    sizes = merchant_sizes(spec)
    assert sizes[0] == 7000 and sizes.sum() == 10_000 and (sizes[1:] >= 50).all()
    df = generate_platform(spec)
    assert len(df) == 10_000 and df.groupby("merchant_id").size().max() == 7000
    assert df["timestamp"].between(0, spec.days * 86_400 - 1).all()
    # Users stay a tenth of the window: one user's rows span at most about that.
    span = df.groupby("user_id")["timestamp"].agg(lambda t: t.max() - t.min())
    assert span.max() <= 0.12 * spec.days * 86_400
    pd.testing.assert_frame_equal(df, generate_platform(spec))   # still deterministic

