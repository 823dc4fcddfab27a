"""A merchant's local optimizer state, kept on the merchant between rounds (Flower's per-node,
per-run `Context.state`), so its Adagrad accumulators keep growing as the pooled and local trainers'
do: the same rule in every mode.

Started afresh every round, Adagrad's first step moves every coordinate the client touches by about
the learning rate whatever its gradient; the federated model then needed three times the rounds to
reach the quality it reached with the state kept (synthetic_60k: round 18 against round 6, README).
Nothing of it leaves the merchant. Id-indexed tables keep only the rows that hold state (a merchant
trains a few of a million item rows); everything else is kept whole.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from tasks.training import optimized_parameters

OPTIMIZER_STATE = "optimizer-state"  # ArrayRecord in Context.state: "<parameter>|<slot>" -> array
ROWS = "rows"                        # the slot of an id table's stored row ids


def _named(parameters: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer
           ) -> dict[str, torch.nn.Parameter]:
    """The optimizer's parameters by name (a new optimizer is built every round: names are what persist)."""
    optimized = {id(p) for p in optimized_parameters(optimizer)}
    return {name: p for name, p in parameters.items() if id(p) in optimized}


def save_optimizer_state(state: RecordDict, optimizer: torch.optim.Optimizer,
                         parameters: Mapping[str, torch.nn.Parameter], id_tables: Iterable[str]) -> None:
    tables = set(id_tables)
    record: dict[str, Array] = {}
    for name, parameter in _named(parameters, optimizer).items():
        slots = {k: v.detach().cpu() for k, v in optimizer.state.get(parameter, {}).items() if torch.is_tensor(v)}
        if not slots:
            continue
        per_row = {k for k, v in slots.items() if v.shape == parameter.shape}
        if name in tables and per_row:
            held = torch.zeros(parameter.shape[0], dtype=torch.bool)
            for k in per_row:
                held |= slots[k].reshape(parameter.shape[0], -1).ne(0).any(dim=1)
            rows = held.nonzero().squeeze(1)
            record[f"{name}|{ROWS}"] = Array(rows.numpy().astype(np.int64))
            slots.update({k: slots[k][rows] for k in per_row})
        # np.array, not np.ascontiguousarray: that one makes a 0-d step count 1-d.
        record.update({f"{name}|{k}": Array(np.array(v.numpy(), order="C")) for k, v in slots.items()})
    state[OPTIMIZER_STATE] = ArrayRecord(record)


def load_optimizer_state(state: RecordDict, optimizer: torch.optim.Optimizer,
                         parameters: Mapping[str, torch.nn.Parameter]) -> bool:
    """Put the kept state into a newly built optimizer; False when there is none (the first round)."""
    if OPTIMIZER_STATE not in state.array_records:
        return False
    kept: dict[str, dict[str, np.ndarray]] = {}
    for key, array in state.array_records[OPTIMIZER_STATE].items():
        name, slot = key.rsplit("|", 1)
        kept.setdefault(name, {})[slot] = array.numpy()
    for name, parameter in _named(parameters, optimizer).items():
        if name not in kept:
            continue
        slots = dict(kept[name])
        rows = slots.pop(ROWS, None)
        restored = {}
        for slot, value in slots.items():
            tensor = torch.as_tensor(value)
            if tensor.dim() == 0:  # a step count: optimizers keep it on the CPU
                restored[slot] = tensor
                continue
            if rows is not None:
                full = torch.zeros(parameter.shape, dtype=tensor.dtype)
                full[torch.as_tensor(rows)] = tensor
                tensor = full
            restored[slot] = tensor.to(parameter.device)
        optimizer.state[parameter] = restored
    return True
