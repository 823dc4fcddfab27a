"""Multi-task FedAvg as one sum, for secure aggregation (privacy=secagg), as plain array math.

SecAgg+ reveals only the sum of the vectors the merchants send. Each merchant therefore sends every
parameter multiplied by its own weight for it (shared parameters: labelled examples; a task's
parameters: that task's label count), followed by those weights, all divided by a public bound (the
largest merchant's train rows, which the server has from setup) so every value stays inside
SecAgg+'s clipping range. From the sum the server divides each parameter's block by its summed
weight: the same weighted means as server_app/aggregation.aggregate_multitask, without ever seeing
one merchant's vector.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def owner_order(owners: Mapping[str, str | None]) -> list[str | None]:
    """The weights' order at the end of the vector: shared (None) first, then tasks by name."""
    return sorted(set(owners.values()), key=lambda owner: (owner is not None, owner or ""))


def encode_weighted(state: Mapping[str, np.ndarray], owners: Mapping[str, str | None],
                    weights: Mapping[str | None, float], bound: float) -> list[np.ndarray]:
    """The vector one merchant sends: each parameter (in `state` order) times its owner's weight over
    `bound`, then the weights over `bound`. Scalars travel as 1-element arrays: SecAgg+'s unmasking
    in Flower 1.42 shifts and rescales its arrays in place, which a 0-d array silently escapes."""
    scaled = [np.atleast_1d(np.asarray(value, np.float64) * (weights.get(owners[name], 0.0) / bound))
              for name, value in state.items()]
    return scaled + [np.array([weights.get(owner, 0.0) / bound for owner in owner_order(owners)], np.float64)]


def decode_sum(summed: Sequence[np.ndarray], current: Mapping[str, np.ndarray],
               owners: Mapping[str, str | None]) -> dict[str, np.ndarray]:
    """New global arrays from the sum of the merchants' vectors; a parameter nobody weighted keeps its value."""
    totals = dict(zip(owner_order(owners), np.asarray(summed[-1], np.float64)))
    result = {}
    for (name, value), block in zip(current.items(), summed[:-1]):
        total = totals[owners[name]]
        mean = np.asarray(block, np.float64) / total if total > 0 else np.asarray(value, np.float64)
        value = np.asarray(value)
        mean = np.asarray(mean).reshape(value.shape)
        result[name] = np.asarray(mean.astype(value.dtype) if np.issubdtype(value.dtype, np.floating)
                                  else np.rint(mean).astype(value.dtype))
    return result
