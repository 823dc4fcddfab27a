"""Multi-task aggregation under differential privacy, as plain array math tested directly.

Under DP every merchant counts the same: a parameter's new value is the global value plus the
unweighted mean of the clipped updates of the clients that train it (every client for shared
parameters, the clients holding a task's labels for that task's head), plus Gaussian noise of std
noise_multiplier * clip_norm / (that parameter's number of contributors). This equals noising the
sum of the clipped updates once with std noise_multiplier * clip_norm (one merchant moves that sum by
at most clip_norm, whichever heads it trains) and dividing each head's block by its own count, so a
head averaged over fewer clients gets the larger noise its count calls for. The counts themselves
(who took part, who holds which labels) are treated as public: the server learns them from the setup
exchange and the metrics in the clear, and the accountant covers the update's contents only.

Flower's DifferentialPrivacy{Server,Client}SideFixedClipping wrappers cannot do this: they wrap a
strategy's whole aggregate, clip every ArrayRecord of a reply alike, and add one noise std
(noise_multiplier * clip_norm / sampled clients) to every array, which is calibrated for an
unweighted mean over all sampled clients only. MultiTaskFedAvg weights shared parameters by
examples and each head by its task's label counts (one merchant can carry 75 % of a weight), and a
head averaged over fewer clients needs more noise; their accountant, in turn, accepts only
FedAvg.aggregate_train with equal weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from core.privacy import add_gaussian_noise, as_dtype_of, clip_update, l2_norm, noise_std, update_of
from server_app.aggregation import ClientUpdate, parameter_weights


@dataclass
class ClipReport:
    """What this round's private mean did, for the log: how many updates clipping shortened, their
    median norm, and the L2 norms of the mean update without noise (signal) and of the noise added."""
    clipped: int
    updates: int
    median_norm: float
    signal: float = 0.0
    noise: float = 0.0


def trained_parameters(update: ClientUpdate, owners: Mapping[str, str | None]) -> list[str]:
    """The parameters a client's data gives a gradient to: shared ones if it has any labelled example,
    a task's head if it holds that task's labels. It sends the others back unchanged."""
    weights = {owner: parameter_weights(owner, [update])[0] for owner in set(owners.values())}
    return [name for name, owner in owners.items() if weights[owner] > 0]


def private_mean(current: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
                 owners: Mapping[str, str | None], clip_norm: float | None, noise_multiplier: float,
                 rng: np.random.Generator) -> tuple[dict[str, np.ndarray], ClipReport]:
    """Per parameter, the global value plus the unweighted mean of its contributors' clipped updates
    plus noise for their count. `clip_norm` None: the updates arrive clipped and noised (local DP)."""
    deltas, norms = [], []
    for update in updates:
        names = trained_parameters(update, owners)
        delta = update_of({n: update.arrays[n] for n in names}, {n: current[n] for n in names})
        norms.append(l2_norm(delta))
        deltas.append(delta if clip_norm is None else clip_update(delta, clip_norm))
    result, signal, noise = {}, 0.0, 0.0
    for name, value in current.items():
        if name not in owners:
            raise KeyError(f"parameter {name!r} has no owner entry; the model and the server disagree")
        contributions = [delta[name] for delta in deltas if name in delta]
        if not contributions:
            result[name] = np.array(value, copy=True)
            continue
        mean = {name: np.mean(contributions, axis=0)}
        signal += l2_norm(mean) ** 2
        if clip_norm is not None:
            noisy = add_gaussian_noise(mean, noise_std(noise_multiplier, clip_norm, len(contributions)), rng)
            noise += l2_norm({name: noisy[name] - mean[name]}) ** 2
            mean = noisy
        result[name] = as_dtype_of(np.asarray(value, np.float64) + mean[name], value)
    clipped = sum(n > clip_norm for n in norms) if clip_norm is not None else 0
    return result, ClipReport(int(clipped), len(norms), float(np.median(norms)) if norms else 0.0,
                              float(np.sqrt(signal)), float(np.sqrt(noise)))
