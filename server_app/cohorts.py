"""Which merchants a round trains and which it evaluates: plain functions over merchant indices.

Training draws `federation.clients_per_round` (or `fraction_train`) merchants afresh each round
(replies.sample_clients, seeded by seed and round). Evaluation scores one *evaluation cohort* every
round: `federation.clients_per_evaluation` (or `fraction_evaluate`) merchants, the first of a fixed
seeded order of merchant indices. With every merchant evaluated (the default) that is everyone, as
before; with fewer, every round (and the final evaluation of the kept round) is scored on the same
merchants, so rounds compare like with like and select_round=best_val compares one set's losses. A
merchant that cannot be evaluated (its set-up failed) gives its place to the next in the order.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from core.errors import InputError
from server_app.replies import sample_clients, sample_count

MASK64 = (1 << 64) - 1


def evaluation_count(fed: Mapping[str, Any]) -> int | None:
    """federation.clients_per_evaluation, checked (None: fraction_evaluate of the nodes)."""
    count = fed.get("clients_per_evaluation")
    if count is not None and int(count) < 1:
        raise InputError(f"federation.clients_per_evaluation must be >= 1 (or null: use fraction_evaluate), got {count}")
    fraction = float(fed["fraction_evaluate"])
    if not 0 < fraction <= 1:
        raise InputError(f"federation.fraction_evaluate must lie in (0, 1], got {fraction:g}")
    return None if count is None else int(count)


def train_cohort(nodes: Mapping[int, int], fraction: float, count: int | None, seed: int,
                 server_round: int) -> dict[int, int]:
    """The nodes (node -> merchant index) round `server_round` trains: drawn by merchant index."""
    node_of_index = {index: node for node, index in nodes.items()}
    chosen = sample_clients(list(node_of_index), fraction, count, seed, server_round, "train")
    return {node_of_index[i]: i for i in chosen}


def evaluation_order(indices: Iterable[int], seed: int) -> list[int]:
    """Merchant indices in the run's fixed evaluation order: a hash of (seed, index), so a merchant's
    place depends on nothing else (not on who else is connected, nor on the round)."""
    return sorted(indices, key=lambda i: (_mix(int(seed) * 0x9E3779B97F4A7C15 + int(i)), int(i)))


def evaluation_cohort(nodes: Mapping[int, int], fraction: float, count: int | None, seed: int,
                      skip: Iterable[int] = ()) -> dict[int, int]:
    """The nodes (node -> merchant index) a round evaluates: the first `count` (or `fraction`, at least
    one) of `nodes` in evaluation order, passing over the nodes in `skip` (set-up failed)."""
    take = sample_count(len(nodes), fraction, count)
    skip = set(skip)
    node_of_index = {index: node for node, index in nodes.items()}
    cohort: dict[int, int] = {}
    for index in evaluation_order(node_of_index, seed):
        if len(cohort) == take:
            break
        if node_of_index[index] not in skip:
            cohort[node_of_index[index]] = index
    return cohort


def _mix(x: int) -> int:
    """splitmix64's finaliser: a fixed, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)
