"""What one client sends per round, in bytes of the serialised message, under each wire format
(federation.sparse_updates, federation.compression; core/update_codec.py), and what each format does
to the round's aggregate.

    python -m benchmarks.update_bytes [--merchants N] [hydra overrides...]

Every merchant's node answers one train request (the first round past train.wide_rounds) with the real client code
(client_app/merchant.py); its trained model is then encoded in each format, decoded by the server's
code and aggregated (server_app/strategy.py, server_app/aggregation.py). Bytes are those of the
reply's serialised content (Flower's protobuf); the aggregate of each format is compared with the
whole, full-precision one. Run it on the default data and on a large catalogue, e.g.
`data.hash_buckets.item_id=1000000`. Writes outputs/bench/update_bytes/report.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from benchmarks.report import markdown, publish
from client_app.merchant import train_content, update_records
from core import protocol
from core.config import compose_config, to_plain
from core.errors import InputError
from data.partition import partition_table, read_manifest
from launch.recording import content_bytes
from server_app.aggregation import aggregate
from server_app.strategy import train_update
from tasks.experiment import open_experiment
from tasks.state import joint_owners, joint_state
from tasks.wide import averaged_by_rows, first_deep_round, newton_fitted

# name -> (federation.sparse_updates, federation.compression); the first is the reference
FORMATS = {"whole, float32": (False, "none"), "sparse, float32": (True, "none"),
           "sparse, float16": (True, "float16"), "sparse, int8": (True, "int8")}


def _with_format(cfg: Mapping[str, Any], sparse: bool, compression: str) -> dict:
    return {**cfg, "federation": {**cfg["federation"], "sparse_updates": sparse, "compression": compression}}


def measure(cfg: Mapping[str, Any], merchants: int) -> dict[str, Any]:
    experiment = open_experiment(cfg)
    model, weighting = experiment.new_model(), experiment.new_weighting()
    current = {name: value.numpy().copy() for name, value in joint_state(model, weighting).items()}
    sent = ArrayRecord(joint_state(model, weighting))
    manifest = str(partition_table(cfg["data"]))
    n_nodes = len(read_manifest(manifest))
    fitted, row_tables = newton_fitted(model, experiment.cfg["train"]), averaged_by_rows(model, cfg)
    reference_cfg = _with_format(cfg, *FORMATS["whole, float32"])
    sizes: dict[str, list[int]] = {name: [] for name in FORMATS}
    updates: dict[str, list] = {name: [] for name in FORMATS}
    server_round = first_deep_round(experiment.cfg["train"])
    download = 0
    for k in range(min(merchants, n_nodes)):
        request = RecordDict({protocol.ARRAYS: sent, protocol.CONFIG: ConfigRecord(
            {protocol.PLAN: experiment.plan.to_json(), protocol.SERVER_ROUND: server_round, protocol.MERCHANT_INDEX: k})})
        download = content_bytes(request)
        node = {protocol.PARTITION_ID: k, protocol.NUM_PARTITIONS: n_nodes}
        whole = train_content(request, node, manifest, reference_cfg)  # trains once; every format encodes it
        trained = whole[protocol.ARRAYS].to_torch_state_dict()
        rows = {name: pair.numpy()[0] for name, pair in whole[protocol.ROW_COUNTS].items()} \
            if protocol.ROW_COUNTS in whole.array_records else {}
        for name, (sparse, compression) in FORMATS.items():
            content = RecordDict({key: value for key, value in whole.items()
                                  if key not in (protocol.ARRAYS, protocol.TABLE_ROWS, protocol.SCALES)})
            content.update(update_records(sent, trained, rows, fitted, _with_format(cfg, sparse, compression),
                                          server_round, k))
            sizes[name].append(content_bytes(content))
            parsed = train_update(content, current, compression, fitted)
            if isinstance(parsed, str):
                raise RuntimeError(f"{name}: the server refused the reply: {parsed}")
            updates[name].append(parsed[0])
        print(f"merchant {k}: " + ", ".join(f"{n} {sizes[n][-1] / 2**20:.2f} MB" for n in FORMATS), flush=True)
    owners = joint_owners(model, weighting)
    aggregates = {name: aggregate(current, ups, owners, row_tables) for name, ups in updates.items()}
    reference = aggregates["whole, float32"]
    deviation = {name: max(float(np.abs(agg[p].astype(np.float64) - reference[p]).max()) for p in reference)
                 for name, agg in aggregates.items()}
    return {"model_mb": sum(v.nbytes for v in current.values()) / 2**20, "download": download,
            "sizes": {name: float(np.mean(v)) for name, v in sizes.items()}, "deviation": deviation,
            "merchants": len(sizes["whole, float32"]), "round": server_round}


def report(command: str, figures: Mapping[str, Any]) -> str:
    ref = figures["sizes"]["whole, float32"]
    rows = [[name, f"{size / 2**20:.3f}", f"{ref / size:.1f}", f"{figures['deviation'][name]:.2e}"]
            for name, size in figures["sizes"].items()]
    return "\n\n".join([
        f"Command: `{command}`",
        f"Model {figures['model_mb']:.2f} MB in float32; the server sends each client the whole model "
        f"({figures['download'] / 2**20:.2f} MB serialised). What one client sends back, mean over "
        f"{figures['merchants']} merchants (round {figures['round']}, the first that trains the deep part; serialised reply content):",
        markdown(["format", "MB per client", "x smaller than whole", "largest change of the aggregate vs whole float32"], rows),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides")
    parser.add_argument("--merchants", type=int, default=1000, help="at most this many merchants answer")
    parser.add_argument("--out", default="outputs/bench/update_bytes")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        figures = measure(to_plain(compose_config(args.overrides)), args.merchants)
    except InputError as exc:
        print(f"update-bytes: error: {exc}", file=sys.stderr)
        return 2
    command = "python -m benchmarks.update_bytes " + " ".join(
        ([f"--merchants {args.merchants}"] if args.merchants != 1000 else []) + args.overrides)
    publish(report(command.strip(), figures), Path(args.out).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
