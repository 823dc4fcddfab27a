"""A deterministic synthetic marketplace: the embedded default data set.

Merchants of very different sizes (a long tail) share parts of one user population and one item
universe. A latent-factor ground truth (user taste x item traits, item popularity, user activity,
merchant quality) drives the click, purchase-after-click and 1-5 rating labels. Each row keeps its
true probabilities and expected rating so benchmarks can show what an oracle would score, and its
item's `category`: the side column real catalogues have, the only thing known of an item never seen
in train (conf/data/synthetic_coldstart.yaml uses it as a feature; the other presets leave it unread).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
import pandas as pd

from core.errors import InputError
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
    # Knobs for real-looking data (conf/data/synthetic_sparse.yaml, synthetic_coldstart.yaml). Their
    # defaults reproduce the default table exactly: none of them draws a random number unless it is set.
    activity_shape: float = 1.5      # user activity ~ 1 + Pareto(activity_shape): smaller = heavier tail
    rows_per_customer: float = 6.0   # a merchant's customer population is its rows / this many users
    catalog_scale: float = 8.0       # a merchant's catalogue is catalog_scale * sqrt(rows) items
    dominant_share: float = 0.0      # > 0: the largest merchant holds this share of rows, the rest a long tail
    rating_shift: float = 0.0        # added to the latent rating centre (3.4 stars): > 0 skews to 4-5 stars
    no_purchase_fraction: float = 0.0  # share of merchants that never record a purchase (label all 0)
    click_drift: float = 0.0         # change of the click logit from the first to the last day
    purchase_drift: float = 0.0      # change of the purchase-after-click logit from the first to the last day
    rating_drift: float = 0.0        # change of the rating centre (stars) from the first to the last day
    new_user_fraction: float = 0.0   # share of users that arrive during the window instead of being there
    new_item_fraction: float = 0.0   # share of items that arrive during the window
    arrival_start: float = 0.0       # arrivals are uniform over [arrival_start, 1] of the window
    user_lifetime: float = 1.0       # an arrived user is active this share of the window (1 = to the end)
    item_lifetime: float = 1.0       # an arrived item is on sale this share of the window

    def __post_init__(self) -> None:
        # The largest merchant always collects ratings and records purchases, so the tasks have a base.
        for key in ("no_rating_fraction", "no_purchase_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0 or round(value * self.n_merchants) > self.n_merchants - 1:
                hint = " (for no ratings at all: data.synthetic.rating_rate=0)" if key == "no_rating_fraction" else ""
                raise InputError(f"data.synthetic.{key} must be in [0, 1) and leave the largest of the "
                                 f"{self.n_merchants} merchants out, got {value}{hint}")


def platform_spec(synthetic_cfg: Mapping[str, Any]) -> PlatformSpec:
    """`data.synthetic` as a PlatformSpec: an unknown knob or a bad value fails in one line."""
    known = {f.name for f in fields(PlatformSpec)}
    unknown = sorted(set(synthetic_cfg) - known)
    if unknown:
        raise InputError(f"data.synthetic has no setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return PlatformSpec(**synthetic_cfg)


COLUMNS = ("merchant_id", "user_id", "item_id", "category", "timestamp", "rating", "purchase", "click",
           ORACLE_COLUMNS["rating"], ORACLE_COLUMNS["purchase"], ORACLE_COLUMNS["click"])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def merchant_sizes(spec: PlatformSpec) -> np.ndarray:
    weights = np.arange(1, spec.n_merchants + 1, dtype=float) ** -spec.size_skew
    spare = spec.n_rows - spec.min_merchant_rows * spec.n_merchants
    if spare < 0:
        raise ValueError("n_rows is too small for n_merchants * min_merchant_rows")
    if spec.dominant_share > 0:
        if not 0 < spec.dominant_share < 1 or spec.n_merchants < 2:
            raise ValueError("dominant_share must be in (0, 1) with at least 2 merchants")
        # The largest merchant gets its share; the others split the rest by rank ** -size_skew.
        first = int(round(spec.dominant_share * spec.n_rows))
        spare = spec.n_rows - first - spec.min_merchant_rows * (spec.n_merchants - 1)
        if spare < 0:
            raise ValueError("dominant_share leaves too few rows for the other merchants' min_merchant_rows")
        weights = weights[:-1]  # ranks 1.. of the tail
        tail = spec.min_merchant_rows + np.floor(spare * weights / weights.sum()).astype(int)
        tail[0] += spec.n_rows - first - tail.sum()
        return np.concatenate([[first], tail])
    sizes = spec.min_merchant_rows + np.floor(spare * weights / weights.sum()).astype(int)
    sizes[0] += spec.n_rows - sizes.sum()
    return sizes


def _active_spans(rng: np.random.Generator, n: int, fraction: float, start: float,
                  lifetime: float) -> tuple[np.ndarray, np.ndarray]:
    """(arrival, departure) of each of n users or items as shares of the window: a `fraction` of them
    arrive uniformly over [start, 1] and stay `lifetime`; the others are there all the time."""
    arrive, leave = np.zeros(n), np.ones(n)
    if fraction > 0:
        late = rng.random(n) < fraction
        arrive[late] = rng.uniform(start, 1.0, late.sum())
        leave[late] = np.minimum(arrive[late] + lifetime, 1.0)
    return arrive, leave


def _rating_distribution(mean_score: np.ndarray, sigma: float = 0.9) -> np.ndarray:
    """P(rating = 1..5) per row: a discretised bell around the latent score."""
    levels = np.arange(1, 6, dtype=float)
    logits = -((levels[None, :] - mean_score[:, None]) ** 2) / (2 * sigma**2)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def _items_on_sale(rng: np.random.Generator, when: np.ndarray, catalog: np.ndarray, weights: np.ndarray,
                   arrive: np.ndarray, leave: np.ndarray, bins: int = 200) -> np.ndarray:
    """An item per row, by weight among the catalogue items on sale at the row's time (to 1/bins)."""
    items = np.empty(len(when), dtype=np.int64)
    slot = np.minimum((when * bins).astype(int), bins - 1)
    for b in np.unique(slot):
        rows = np.flatnonzero(slot == b)
        mid = (b + 0.5) / bins
        on_sale = (arrive[catalog] <= mid) & (leave[catalog] >= mid)
        if not on_sale.any():
            on_sale = arrive[catalog] <= mid
        if not on_sale.any():
            on_sale = np.ones(len(catalog), dtype=bool)
        w = weights[on_sale]
        items[rows] = rng.choice(catalog[on_sale], len(rows), p=w / w.sum())
    return items


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
    user_activity = rng.pareto(spec.activity_shape, spec.n_users) + 1.0
    merchant_quality = rng.normal(0, 0.3, spec.n_merchants)

    sizes = merchant_sizes(spec)
    n_without = int(round(spec.no_rating_fraction * spec.n_merchants))
    # The largest merchant always collects ratings, so the rating task has a solid base.
    without_ratings = set(rng.choice(np.arange(1, spec.n_merchants), n_without, replace=False).tolist())
    # The new knobs draw from their own stream, so the main one (and the default table) is unchanged.
    extra = np.random.default_rng([spec.seed, 1])
    user_arrive, user_leave = _active_spans(extra, spec.n_users, spec.new_user_fraction, spec.arrival_start,
                                            spec.user_lifetime)
    item_arrive, item_leave = _active_spans(extra, spec.n_items, spec.new_item_fraction, spec.arrival_start,
                                            spec.item_lifetime)
    arrivals = spec.new_user_fraction > 0 or spec.new_item_fraction > 0
    # A user's rows are her activity times the share of the window she is there (1 for everyone by default).
    user_weight = user_activity * (user_leave - user_arrive)
    n_no_purchase = int(round(spec.no_purchase_fraction * spec.n_merchants))
    # Like ratings, the largest merchant always records purchases.
    without_purchases = set(extra.choice(np.arange(1, spec.n_merchants), n_no_purchase, replace=False).tolist())
    window = spec.days * 86_400

    parts: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS}
    for m, size in enumerate(sizes):
        # Catalog: items of the merchant's favoured categories, more of them for larger merchants.
        cat_mix = rng.dirichlet(np.full(spec.n_categories, 0.5))
        item_w = cat_mix[item_cat] * np.exp(item_pop)
        n_catalog = int(np.clip(spec.catalog_scale * np.sqrt(size), 50, spec.n_items))
        catalog = rng.choice(spec.n_items, n_catalog, replace=False, p=item_w / item_w.sum())
        # Customers: drawn from the shared population by activity, so big merchants overlap a lot.
        n_pop = int(np.clip(size / spec.rows_per_customer, 40, spec.n_users))
        population = rng.choice(spec.n_users, n_pop, replace=False, p=user_weight / user_weight.sum())
        u = rng.choice(population, size, p=user_weight[population] / user_weight[population].sum())
        pop_w = np.exp(item_pop[catalog])
        if arrivals:
            # Time first, within the user's active span; then an item on sale at that time.
            when = user_arrive[u] + rng.random(size) * (user_leave[u] - user_arrive[u])
            i = _items_on_sale(rng, when, catalog, pop_w, item_arrive, item_leave)
            when = np.clip(np.maximum(when, item_arrive[i]), 0.0, 1.0)
            timestamp = np.minimum(np.floor(when * window), window - 1).astype(np.int64)
            order = np.argsort(timestamp, kind="stable")
            u, i, timestamp = u[order], i[order], timestamp[order]
        else:
            i = rng.choice(catalog, size, p=pop_w / pop_w.sum())

        affinity = np.einsum("nd,nd->n", user_vec[u], item_vec[i]) * 1.6
        # Random numbers in the order the labels and timestamps have always drawn them.
        u_click, u_buy, u_rating, u_rated = (rng.random(size) for _ in range(4))
        if not arrivals:
            timestamp = np.sort(rng.integers(0, window, size))
        when = timestamp / window - 0.5  # -0.5 on the first day, +0.5 on the last: drift is centred

        p_click = _sigmoid(spec.click_bias + spec.click_drift * when + affinity + item_pop[i] + user_bias[u]
                           + merchant_quality[m])
        p_buy_given_click = _sigmoid(spec.purchase_bias + spec.purchase_drift * when + 0.8 * affinity
                                     + item_quality[i] + 0.5 * user_bias[u])
        if m in without_purchases:
            p_buy_given_click = np.zeros(size)
        click = u_click < p_click
        purchase = click & (u_buy < p_buy_given_click)

        rating_probs = _rating_distribution(3.4 + spec.rating_shift + spec.rating_drift * when
                                            + 1.1 * affinity + 0.6 * item_quality[i])
        rating_mean = rating_probs @ np.arange(1, 6)
        rating = (u_rating[:, None] > rating_probs.cumsum(axis=1)).sum(axis=1) + 1.0
        rated = u_rated < spec.rating_rate
        if m in without_ratings:
            rated[:] = False

        for name, values in (("merchant_id", np.full(size, m)), ("user_id", u), ("item_id", i),
                             ("category", item_cat[i]), ("timestamp", timestamp.astype(np.int64)),
                             ("rating", np.where(rated, rating, np.nan).astype("float32")),
                             ("purchase", purchase.astype("float32")), ("click", click.astype("float32")),
                             (ORACLE_COLUMNS["rating"], np.where(rated, rating_mean, np.nan).astype("float32")),
                             (ORACLE_COLUMNS["purchase"], (p_click * p_buy_given_click).astype("float32")),
                             (ORACLE_COLUMNS["click"], p_click.astype("float32"))):
            parts[name].append(values)
    # One frame at the end, ids named through a lookup: building a frame per merchant cost 1.7 ms each
    # (17 s of 20 s at 10,000 merchants).
    columns = {name: np.concatenate(values) for name, values in parts.items()}
    named = {"merchant_id": _names("m", 2, spec.n_merchants), "user_id": _names("u", 5, spec.n_users),
             "item_id": _names("i", 5, spec.n_items), "category": _names("c", 2, spec.n_categories)}
    return pd.DataFrame({name: named[name][values] if name in named else values for name, values in columns.items()})


def _names(prefix: str, digits: int, n: int) -> np.ndarray:
    """Object array of the ids 0..n-1 as text ("u00042"), indexed by the generator's integers."""
    return np.array([f"{prefix}{x:0{digits}d}" for x in range(n)], dtype=object)
