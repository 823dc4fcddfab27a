"""Differential privacy's mechanism as plain array math, shared by the nodes (local DP) and the server
(central DP): clip a merchant's update, the Gaussian noise a bound calls for, and the settings
(`privacy=none|dp|ldp|secagg`) with the combinations the project supports (secure aggregation's own
math is core/secure_sum.py).

The privacy unit is a merchant: its update is its whole round's delta from the global model it was
sent, over every array it sends, clipped to `clip_norm` in L2. Under central DP the server adds noise
of std `noise_multiplier * clip_norm / n` to a mean over n clipped updates; under local DP every node
adds noise of std `noise_multiplier * clip_norm` to its own clipped update before it leaves.

Flower's helpers (flwr.supercore.differential_privacy, LocalDpMod) do the same clip and noise on
lists of arrays, but draw noise from numpy's global generator (seeded runs make it predictable, and
tests cannot fix it) and LocalDpMod calibrates one (epsilon, delta) release with the classical
Gaussian bound instead of a noise multiplier an accountant composes: these few lines stay here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from core.errors import InputError

MODES = ("none", "dp", "ldp", "secagg")
ON_TARGET = ("stop", "warn")

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class PrivacySettings:
    mode: str = "none"
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    target_epsilon: float | None = None
    on_target: str = "stop"
    noise_seed: int | None = None  # None = fresh OS entropy; an int makes noise reproducible (experiments only)

    @property
    def clips(self) -> bool:
        return self.mode in ("dp", "ldp")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "PrivacySettings":
        """The run's privacy settings, refusing (one line) what the project does not support."""
        given = dict(cfg.get("privacy") or {"mode": "none"})
        mode = str(given.get("mode", "none"))
        if mode not in MODES:
            raise InputError(f"privacy.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "none":
            return cls()
        if mode == "secagg":
            settings = cls(mode)
            settings.check_row_statistics(cfg)
            return settings
        settings = cls(mode, float(given["clip_norm"]), float(given["noise_multiplier"]), float(given["delta"]),
                       None if given.get("target_epsilon") is None else float(given["target_epsilon"]),
                       str(given.get("on_target", "stop")),
                       None if given.get("noise_seed") is None else int(given["noise_seed"]))
        settings.check(cfg)
        return settings

    def check(self, cfg: Mapping[str, Any]) -> None:
        prefix = f"privacy={self.mode}"
        if self.clip_norm <= 0:
            raise InputError(f"{prefix}: privacy.clip_norm must be > 0, got {self.clip_norm}")
        if self.noise_multiplier < 0:
            raise InputError(f"{prefix}: privacy.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise InputError(f"{prefix}: privacy.delta must be in (0, 1), got {self.delta}")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise InputError(f"{prefix}: privacy.target_epsilon must be > 0 or null, got {self.target_epsilon}")
        if self.on_target not in ON_TARGET:
            raise InputError(f"{prefix}: privacy.on_target must be stop or warn, got {self.on_target!r}")
        self.check_row_statistics(cfg)

    def check_row_statistics(self, cfg: Mapping[str, Any]) -> None:
        """Federated only, and no per-row statistics: under DP they are per-row sums that no clip bounds;
        under SecAgg+ they cannot be masked (the mod clears them) and name the rows a merchant touched."""
        prefix = f"privacy={self.mode}"
        if cfg.get("mode", "federated") != "federated":
            raise InputError(f"{prefix} protects what merchants send, so it needs mode=federated, got mode={cfg['mode']}")
        if cfg["train"]["first_order_fit"] != "sgd":
            raise InputError(f"{prefix} needs train.first_order_fit=sgd (the Newton statistics are unclipped "
                             f"per-row sums), got {cfg['train']['first_order_fit']}")
        if str(cfg["train"].get("embedding_newton", "auto")).lower() not in ("auto", "false"):
            raise InputError(f"{prefix} needs train.embedding_newton=false or auto (its statistics are unclipped "
                             f"per-row sums), got {cfg['train']['embedding_newton']}")
        if cfg["federation"]["table_aggregation"] != "dense":
            raise InputError(f"{prefix} needs federation.table_aggregation=dense (row counts name the rows a "
                             f"merchant touched), got {cfg['federation']['table_aggregation']}")
        if cfg["federation"].get("compression", "none") != "none":
            raise InputError(f"{prefix} needs federation.compression=none (clipping and noise are calibrated on "
                             f"the full-precision update), got {cfg['federation']['compression']}")
        if cfg["federation"].get("aggregation", "mean") != "mean":
            raise InputError(f"{prefix} needs federation.aggregation=mean (a sum or a noised mean of clipped "
                             f"updates has no median), got {cfg['federation']['aggregation']}")
        if self.mode == "secagg" and cfg.get("strategy", {}).get("name", "fedavg") != "fedavg":
            raise InputError(f"{prefix} needs strategy=fedavg (the secure round returns the plain mean), "
                             f"got strategy={cfg['strategy']['name']}")


def l2_norm(arrays: Arrays) -> float:
    """The L2 norm of all arrays flattened into one vector."""
    return float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values())))


def clip_update(update: Arrays, clip_norm: float) -> dict[str, np.ndarray]:
    """The update scaled down to L2 norm `clip_norm` if longer, as one vector (flat clipping)."""
    norm = l2_norm(update)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {name: np.asarray(value, np.float64) * scale for name, value in update.items()}


def update_of(state: Arrays, reference: Arrays) -> dict[str, np.ndarray]:
    """A node's update: its state minus the global state it was sent, in float64."""
    return {name: np.asarray(state[name], np.float64) - np.asarray(reference[name], np.float64) for name in reference}


def noise_std(noise_multiplier: float, clip_norm: float, contributors: int = 1) -> float:
    """Std of the Gaussian noise on a mean of `contributors` updates clipped to `clip_norm`: one
    update moves their sum by at most clip_norm, so the sum gets noise_multiplier * clip_norm."""
    if contributors < 1:
        raise ValueError(f"a mean needs at least one contributor, got {contributors}")
    return noise_multiplier * clip_norm / contributors


def add_gaussian_noise(arrays: Arrays, std: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each entry plus independent N(0, std^2), in float64."""
    return {name: np.asarray(value, np.float64) + (rng.normal(0.0, std, np.shape(value)) if std > 0 else 0.0)
            for name, value in arrays.items()}


def noise_generator(seed: int | None, *stream: int) -> np.random.Generator:
    """Fresh OS entropy when `seed` is None (the only private choice); else one reproducible stream
    per (seed, *stream), e.g. per round and merchant."""
    return np.random.default_rng(None if seed is None else np.random.SeedSequence([seed, *stream]))


def as_dtype_of(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    """`value` as an array of `like`'s dtype (0-d arrays stay arrays; integers rounded)."""
    like, value = np.asarray(like), np.asarray(value)
    return value.astype(like.dtype) if np.issubdtype(like.dtype, np.floating) else np.rint(value).astype(like.dtype)


def privatize_locally(sent: Arrays, trained: Arrays, clip_norm: float, noise_multiplier: float,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Local DP: the state a node sends is the global state plus its clipped update plus noise of std
    noise_multiplier * clip_norm, so the server only ever sees a noised update."""
    noisy = add_gaussian_noise(clip_update(update_of(trained, sent), clip_norm),
                               noise_std(noise_multiplier, clip_norm), rng)
    return {name: as_dtype_of(np.asarray(sent[name], np.float64) + noisy[name], sent[name]) for name in sent}
