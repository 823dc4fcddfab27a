import numpy as np
import pandas as pd

from data.synthetic import PlatformSpec, generate_platform

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
