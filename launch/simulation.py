"""A federated job in Flower's local simulation: one virtual SuperNode per merchant.

The table is first split into one file per merchant (`data.partition`), and simulated node k is
handed file k of that manifest: from there on it runs exactly the code a deployed SuperNode runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from client_app.app import make_client_app
from server_app.app import make_server_app
from data.partition import partition_table, read_manifest
from server_app.outputs import RunResult

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def backend_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    fed = cfg["federation"]
    gpus = fed.get("client_gpus")
    if gpus is None:  # share one GPU between the clients that run at once
        gpus = 1.0 / max(1, (os.cpu_count() or 1) // int(fed["client_cpus"])) \
            if cfg["device"] != "cpu" and torch.cuda.is_available() else 0.0
    return {"client_resources": {"num_cpus": int(fed["client_cpus"]), "num_gpus": float(gpus)},
            "init_args": {"logging_level": logging.WARNING, "log_to_driver": True}}


def run_federated_simulation(cfg: Mapping[str, Any], output_dir: Path, client_mods: Sequence[Callable] = (),
                             grid_view: Callable | None = None) -> RunResult:
    """`client_mods`: Flower mods around every simulated client (tests/faulty_clients.py injects faults);
    `grid_view` wraps the grid the ServerApp is given (see make_server_app; the wire test records with it)."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    from flwr.simulation import run_simulation  # after the environment is set

    logging.getLogger("flwr").propagate = False  # Flower prints its own lines; Hydra's root would repeat them
    manifest = str(partition_table(cfg["data"]))
    n_merchants = len(read_manifest(manifest))
    # Every simulated node exists from the start: the server waits for all of them.
    plain = {**cfg, "federation": {**cfg["federation"], "min_nodes": n_merchants}}
    outcome: dict[str, Any] = {}
    run_simulation(
        server_app=make_server_app(lambda _: plain, lambda _: output_dir, outcome, grid_view),
        client_app=make_client_app(lambda _: plain, lambda _: manifest, client_mods),
        num_supernodes=n_merchants,
        backend_config=backend_config(cfg),
    )
    if "error" in outcome:
        raise outcome["error"]
    if "result" not in outcome:
        raise RuntimeError("the Flower simulation ended without a result; see the log above")
    return outcome["result"]
