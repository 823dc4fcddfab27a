"""A deterministic synthetic marketplace: the embedded default data set.

Merchants of very different sizes (a long tail) share parts of one user population and one item
universe. A latent-factor ground truth (user taste x item traits, item popularity, user activity,
merchant quality) drives the click, purchase-after-click and 1-5 rating labels. Each row keeps its
true probabilities and expected rating so benchmarks can show what an oracle would score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data.schema import ORACLE_COLUMNS


@dataclass(frozen=True)
class PlatformSpec:
    n_merchants: int = 20
    n_rows: int = 240_000
    n_users: int = 3_000
    n_items: int = 1_000
    n_categories: int = 12
    latent_dim: int = 8
    size_skew: float = 1.4          # merchant size ~ rank ** -size_skew
    min_merchant_rows: int = 150
    no_rating_fraction: float = 0.3  # share of merchants that collect no ratings
    rating_rate: float = 0.4         # share of rows rated where a merchant collects ratings
    click_bias: float = -3.1
    purchase_bias: float = -1.9
    days: int = 90
    seed: int = 0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def merchant_sizes(spec: PlatformSpec) -> np.ndarray:
    weights = np.arange(1, spec.n_merchants + 1, dtype=float) ** -spec.size_skew
    spare = spec.n_rows - spec.min_merchant_rows * spec.n_merchants
    if spare < 0:
        raise ValueError("n_rows is too small for n_merchants * min_merchant_rows")
    sizes = spec.min_merchant_rows + np.floor(spare * weights / weights.sum()).astype(int)
    sizes[0] += spec.n_rows - sizes.sum()
    return sizes


def _rating_distribution(mean_score: np.ndarray, sigma: float = 0.9) -> np.ndarray:
    """P(rating = 1..5) per row: a discretised bell around the latent score."""
    levels = np.arange(1, 6, dtype=float)
    logits = -((levels[None, :] - mean_score[:, None]) ** 2) / (2 * sigma**2)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def generate_platform(spec: PlatformSpec = PlatformSpec()) -> pd.DataFrame:
    rng = np.random.default_rng(spec.seed)
    d = spec.latent_dim
    # Items: a category centroid plus item noise; popularity and quality are item traits.
    centroids = rng.normal(0, 1, (spec.n_categories, d))
    item_cat = rng.integers(0, spec.n_categories, spec.n_items)
    item_vec = (centroids[item_cat] + 0.7 * rng.normal(0, 1, (spec.n_items, d))) / np.sqrt(d)
    item_pop = rng.normal(0, 0.6, spec.n_items)
    item_quality = rng.normal(0, 0.5, spec.n_items)
    # Users: taste is a mix of two favourite categories; activity is long-tailed.
    favs = rng.integers(0, spec.n_categories, (spec.n_users, 2))
    user_vec = (centroids[favs[:, 0]] + 0.5 * centroids[favs[:, 1]]
                + 0.8 * rng.normal(0, 1, (spec.n_users, d))) / np.sqrt(d)
    user_bias = rng.normal(0, 0.4, spec.n_users)
    user_activity = rng.pareto(1.5, spec.n_users) + 1.0
    merchant_quality = rng.normal(0, 0.3, spec.n_merchants)

    sizes = merchant_sizes(spec)
    n_without = int(round(spec.no_rating_fraction * spec.n_merchants))
    # The largest merchant always collects ratings, so the rating task has a solid base.
    without_ratings = set(rng.choice(np.arange(1, spec.n_merchants), n_without, replace=False).tolist())

    frames = []
    for m, size in enumerate(sizes):
        # Catalog: items of the merchant's favoured categories, more of them for larger merchants.
        cat_mix = rng.dirichlet(np.full(spec.n_categories, 0.5))
        item_w = cat_mix[item_cat] * np.exp(item_pop)
        n_catalog = int(np.clip(8 * np.sqrt(size), 50, spec.n_items))
        catalog = rng.choice(spec.n_items, n_catalog, replace=False, p=item_w / item_w.sum())
        # Customers: drawn from the shared population by activity, so big merchants overlap a lot.
        n_pop = int(np.clip(size / 6, 40, spec.n_users))
        population = rng.choice(spec.n_users, n_pop, replace=False, p=user_activity / user_activity.sum())
        u = rng.choice(population, size, p=user_activity[population] / user_activity[population].sum())
        pop_w = np.exp(item_pop[catalog])
        i = rng.choice(catalog, size, p=pop_w / pop_w.sum())

        affinity = np.einsum("nd,nd->n", user_vec[u], item_vec[i]) * 1.6
        p_click = _sigmoid(spec.click_bias + affinity + item_pop[i] + user_bias[u] + merchant_quality[m])
        p_buy_given_click = _sigmoid(spec.purchase_bias + 0.8 * affinity + item_quality[i] + 0.5 * user_bias[u])
        click = rng.random(size) < p_click
        purchase = click & (rng.random(size) < p_buy_given_click)

        rating_probs = _rating_distribution(3.4 + 1.1 * affinity + 0.6 * item_quality[i])
        rating_mean = rating_probs @ np.arange(1, 6)
        rating = (rng.random(size)[:, None] > rating_probs.cumsum(axis=1)).sum(axis=1) + 1.0
        rated = rng.random(size) < spec.rating_rate
        if m in without_ratings:
            rated[:] = False

        frames.append(pd.DataFrame({
            "merchant_id": f"m{m:02d}",
            "user_id": [f"u{x:05d}" for x in u],
            "item_id": [f"i{x:05d}" for x in i],
            "timestamp": np.sort(rng.integers(0, spec.days * 86_400, size)),
            "rating": np.where(rated, rating, np.nan).astype("float32"),
            "purchase": purchase.astype("float32"),
            "click": click.astype("float32"),
            ORACLE_COLUMNS["rating"]: np.where(rated, rating_mean, np.nan).astype("float32"),
            ORACLE_COLUMNS["purchase"]: (p_click * p_buy_given_click).astype("float32"),
            ORACLE_COLUMNS["click"]: p_click.astype("float32"),
        }))
    return pd.concat(frames, ignore_index=True)
