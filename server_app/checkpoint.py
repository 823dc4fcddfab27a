"""A federated run's checkpoint after every round, exact resume from it, and a new run from a trained model.

Everything that shapes the rounds still to come is in the checkpoint: the global arrays (the loss
weighting's learned state included, it travels with the model), the server optimiser's state, the
plan fixed at setup, the merchants' indices (they seed each client's batch order), the round keeper
(kept round, its arrays, patience), the scored model's running average (tasks/averaging.py), the metrics history, failures, RNG states and the config. Clients
keep no state between rounds (their batch order is seeded from seed, round and merchant index), and
client sampling is seeded from seed and round, so resuming replays the same rounds as an
uninterrupted run. The file is written to a temporary name and renamed: a crash mid-write leaves the
previous checkpoint whole.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from logging import WARNING
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from flwr.common.logger import log

from core.errors import InputError
from server_app.outputs import RoundRecord
from tasks.state import WEIGHTING_PREFIX

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
FORMAT = 1
# Settings a resumed run may change: how long to go on and operational ones. Anything else would
# make the resumed rounds differ from the interrupted run's.
MAY_CHANGE_ON_RESUME = ("federation.rounds", "patience", "resume", "init_from", "device",
                        "federation.round_timeout_s", "federation.wait_for_nodes_s", "federation.min_nodes",
                        "federation.client_cpus", "federation.client_gpus")

Arrays = dict[str, np.ndarray]


@dataclass
class Checkpoint:
    round: int                                   # the last completed round
    arrays: Arrays                               # the global model (+ loss weighting state) after it
    optimizer: dict[str, dict[str, np.ndarray]]  # the server optimiser's state (slot -> name -> array)
    rounds: list[RoundRecord]
    keeper: dict[str, float]                     # RoundKeeper.progress()
    kept_arrays: Arrays | None                   # RoundKeeper.best_state (best_val only)
    plan: str                                    # the run plan, JSON
    merchant_indices: dict[str, int]
    failures: list[dict[str, Any]]
    config: dict[str, Any]                       # as the run was started (select_round unresolved)
    rng: dict[str, Any] = field(default_factory=dict)
    row_totals: dict[str, Any] = field(default_factory=dict)  # RowTotals.state()
    averaged: Arrays | None = None               # RoundAverage.average: the scored model's running average


def _tensors(arrays: Mapping[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    # np.array, not np.ascontiguousarray: that one turns a 0-d array (a task's global bias) into 1-d.
    return None if arrays is None else {k: torch.from_numpy(np.array(v, order="C")) for k, v in arrays.items()}


def _arrays(tensors: Mapping[str, torch.Tensor] | None) -> Arrays | None:
    return None if tensors is None else {k: v.numpy() for k, v in tensors.items()}


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "torch": torch.get_rng_state()}


def restore_rng(state: Mapping[str, Any]) -> None:
    if not state:
        return
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Atomically: a temporary file in the same folder, flushed, then renamed over the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": FORMAT, "round": checkpoint.round, "arrays": _tensors(checkpoint.arrays),
        "optimizer": {slot: _tensors(values) for slot, values in checkpoint.optimizer.items()},
        "rounds": [dataclasses.asdict(r) for r in checkpoint.rounds], "keeper": dict(checkpoint.keeper),
        "kept_arrays": _tensors(checkpoint.kept_arrays), "plan": checkpoint.plan,
        "merchant_indices": dict(checkpoint.merchant_indices), "failures": list(checkpoint.failures),
        "config": checkpoint.config, "rng": checkpoint.rng,
        "row_totals": {"totals": _tensors(checkpoint.row_totals.get("totals", {})),
                       "counted": list(checkpoint.row_totals.get("counted", []))},
        "averaged": _tensors(checkpoint.averaged),
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(document, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _file_in(path: str | Path, name: str, what: str) -> Path:
    """A checkpoint or model file given directly, or found by name in a run's output folder."""
    path = Path(str(path)).expanduser()
    found = path / name if path.is_dir() else path
    if not found.is_file():
        raise InputError(f"{what}={path}: no {name} there (give a run's output folder or the file itself)")
    return found


def _load(path: Path, what: str) -> dict[str, Any]:
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: one line, whatever the unpickler raised
        raise InputError(f"{what}={path}: cannot read it ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(document, dict):
        raise InputError(f"{what}={path}: not a merchant-fl checkpoint or model file")
    return document


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at `path` (a run's output folder or its checkpoint.pt)."""
    found = _file_in(path, CHECKPOINT, "resume")
    document = _load(found, "resume")
    if document.get("format") != FORMAT:
        raise InputError(f"resume={found}: not a merchant-fl checkpoint (format {document.get('format')!r})")
    return Checkpoint(
        round=int(document["round"]), arrays=_arrays(document["arrays"]),
        optimizer={slot: _arrays(values) for slot, values in document["optimizer"].items()},
        rounds=[RoundRecord(**r) for r in document["rounds"]], keeper=document["keeper"],
        kept_arrays=_arrays(document["kept_arrays"]), plan=document["plan"],
        merchant_indices=document["merchant_indices"], failures=document["failures"],
        config=document["config"], rng=document["rng"],
        row_totals={"totals": _arrays(document.get("row_totals", {}).get("totals", {})),
                    "counted": list(document.get("row_totals", {}).get("counted", []))},
        averaged=_arrays(document.get("averaged")))


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resumable(saved: Mapping[str, Any], cfg: Mapping[str, Any], path: str | Path) -> None:
    """A resumed run must be the interrupted run's config, but for MAY_CHANGE_ON_RESUME."""
    before, now = _flat(saved), _flat(cfg)
    changed = sorted(k for k in set(before) | set(now)
                     if before.get(k) != now.get(k) and not k.startswith(MAY_CHANGE_ON_RESUME))
    if changed:
        shown = ", ".join(f"{k}={before.get(k)!r} there, {now.get(k)!r} now" for k in changed[:3])
        raise InputError(f"resume={path}: the checkpoint was trained with another config ({shown}"
                         f"{', ...' if len(changed) > 3 else ''}); resume with the same overrides "
                         f"(only {', '.join(MAY_CHANGE_ON_RESUME[:2])} may change)")


def trained_state(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a trained model: a run's model.pt (the kept round) or a checkpoint (its latest round)."""
    path = Path(str(path)).expanduser()
    found = path / MODEL if (path / MODEL).is_file() else _file_in(path, CHECKPOINT if path.is_dir() else MODEL,
                                                                    "init_from")
    document = _load(found, "init_from")
    if document.get("format") == FORMAT:
        return _arrays(document["arrays"])
    state = document.get("state")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"init_from={found}: holds no single model state (a mode=local model.pt holds one "
                         f"per merchant: pick a federated or centralized run)")
    return _arrays(state)


def initial_arrays(fresh: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray], path: str | Path
                   ) -> Arrays:
    """The new run's model with a trained model's values: every model array must exist there with the
    same shape (same tasks, features, buckets and architecture); loss weighting state is taken where it
    matches and otherwise starts fresh (a run may change loss=)."""
    out = {}
    for name, value in fresh.items():
        old = trained.get(name)
        if old is not None and old.shape == value.shape:
            out[name] = old.astype(value.dtype)
        elif name.startswith(WEIGHTING_PREFIX):
            out[name] = np.array(value, copy=True)
        else:
            why = "missing" if old is None else f"shaped {list(old.shape)}, the new model's {list(value.shape)}"
            raise InputError(f"init_from={path}: the trained model's {name!r} is {why}; start from a model "
                             f"with the same tasks, data.features, data.hash_buckets and model settings")
    if any(n.startswith(WEIGHTING_PREFIX) and n not in trained for n in fresh):
        log(WARNING, "init_from=%s: the loss weighting's state starts fresh (the trained model has another)", path)
    return out
