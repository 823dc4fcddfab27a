"""A federated job in Flower's local simulation: one virtual SuperNode per merchant.

The table is first split into one file per merchant (`data.partition`), and simulated node k is
handed file k of that manifest: from there on it runs exactly the code a deployed SuperNode runs.
The server learns which node holds which merchant from `SimulatedNodes` (below), not from a message.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

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
    # Ray starts its workers at nice 15, below the driver: here the workers are the clients, i.e. the
    # work, and the driver (server, Flower's message loop) would take the CPU from them.
    "RAY_worker_niceness": "0",
}


def backend_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    fed = cfg["federation"]
    gpus = fed.get("client_gpus")
    if gpus is None:  # share one GPU between the clients that run at once
        gpus = 1.0 / max(1, (os.cpu_count() or 1) // int(fed["client_cpus"])) \
            if cfg["device"] != "cpu" and torch.cuda.is_available() else 0.0
    return {"client_resources": {"num_cpus": int(fed["client_cpus"]), "num_gpus": float(gpus)},
            "init_args": {"logging_level": logging.WARNING, "log_to_driver": True}}


class SimulatedNodes:
    """Which merchant each simulated node holds, without asking it.

    Flower's simulation engine registers node k (a random node id) and gives it partition id k, i.e.
    file k of the manifest; `recording` keeps that mapping as the engine makes it, and the server asks
    this object instead of querying every node. A query per node is what a deployment does, and what
    this saves: in a simulation a message costs ~24 ms of Flower's own time at 10,000 nodes (its
    engine scans every pending message for every node), so identifying 10,000 nodes took 237 s. Only
    merchant ids reach the server this way, from the manifest the launcher already holds; the server
    still reads no row. Without the hook (another Flower version), the server falls back to queries.
    """

    def __init__(self, merchants: Sequence[str], wait_s: float = 10.0) -> None:
        self.merchants = list(merchants)
        self.wait_s = wait_s
        self.partition_of: dict[int, int] = {}
        self.recorded = threading.Event()
        self.hooked = False

    def __call__(self, nodes: list[int]) -> dict[int, str]:
        """node -> merchant id for the nodes the engine registered ({} when unknown)."""
        if not self.hooked or not self.recorded.wait(self.wait_s):
            return {}
        return {n: self.merchants[self.partition_of[n]] for n in nodes if n in self.partition_of}

    @contextmanager
    def recording(self) -> Iterator["SimulatedNodes"]:
        """Within the block, every simulation's node registration is recorded here."""
        try:
            from flwr.server.superlink.fleet.vce import vce_api
            original = vce_api._register_nodes
        except (ImportError, AttributeError):
            yield self
            return

        def register(*args: Any, **kwargs: Any) -> dict[int, int]:
            mapping = original(*args, **kwargs)
            if len(set(mapping.values())) == len(self.merchants):
                self.partition_of = {int(node): int(partition) for node, partition in mapping.items()}
                self.recorded.set()
            return mapping

        vce_api._register_nodes = register
        self.hooked = True
        try:
            yield self
        finally:
            vce_api._register_nodes = original


@contextmanager
def pending_only_dispatch() -> Iterator[bool]:
    """Within the block, Flower's simulation engine looks for messages to run only at the nodes that
    have one; yields whether the engine could be adjusted (else it runs unchanged).

    The engine's dispatch thread asks the link state, every 0.1 s, for a message for every registered
    node, and each ask scans every stored message: nodes x messages checks per sweep, in pure Python,
    holding the GIL. At 10,000 nodes that thread was busy for nearly the whole run, taking the GIL
    from the ServerApp and a CPU from the clients. This dispatcher first collects the nodes that have
    an undelivered message (one pass over the store, under the state's lock), then asks the state for
    those nodes alone, exactly as the engine does: the same messages are handed over, one per node per
    sweep, in the engine's node order."""
    try:
        from flwr.server.superlink.fleet.vce import vce_api
        original = vce_api.add_messages_to_queue
    except (ImportError, AttributeError):
        yield False
        return

    def dispatch(state: Any, queue: Any, nodes_mapping: Mapping[int, int], f_stop: threading.Event) -> None:
        store, lock = getattr(state, "message_ins_store", None), getattr(state, "lock", None)
        if not isinstance(store, dict) or lock is None:
            return original(state, queue, nodes_mapping, f_stop)
        order = {node: k for k, node in enumerate(nodes_mapping)}
        while not f_stop.is_set():
            with lock:
                pending = {m.metadata.dst_node_id for m in store.values() if m.metadata.delivered_at == ""}
            for node_id in sorted(pending & order.keys(), key=order.__getitem__):
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            f_stop.wait(0.1)

    vce_api.add_messages_to_queue = dispatch
    try:
        yield True
    finally:
        vce_api.add_messages_to_queue = original


def run_federated_simulation(cfg: Mapping[str, Any], output_dir: Path, client_mods: Sequence[Callable] = (),
                             grid_view: Callable | None = None) -> RunResult:
    """`client_mods`: Flower mods around every simulated client (tests/faulty_clients.py injects faults);
    `grid_view` wraps the grid the ServerApp is given (see make_server_app; the wire test records with it)."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    from flwr.simulation import run_simulation  # after the environment is set

    logging.getLogger("flwr").propagate = False  # Flower prints its own lines; Hydra's root would repeat them
    manifest = str(partition_table(cfg["data"]))
    merchants = [p.merchant_id for p in read_manifest(manifest)]
    n_merchants = len(merchants)
    # Every simulated node exists from the start: the server waits for all of them.
    plain = {**cfg, "federation": {**cfg["federation"], "min_nodes": n_merchants}}
    outcome: dict[str, Any] = {}
    with SimulatedNodes(merchants).recording() as directory, pending_only_dispatch():
        run_simulation(
            server_app=make_server_app(lambda _: plain, lambda _: output_dir, outcome, grid_view, directory),
            client_app=make_client_app(lambda _: plain, lambda _: manifest, client_mods),
            num_supernodes=n_merchants,
            backend_config=backend_config(cfg),
        )
    if "error" in outcome:
        raise outcome["error"]
    if "result" not in outcome:
        raise RuntimeError("the Flower simulation ended without a result; see the log above")
    return outcome["result"]
