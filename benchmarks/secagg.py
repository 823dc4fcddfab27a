"""What SecAgg+ costs against the same rounds in the clear, measured in one run of each.

    python -m benchmarks.secagg [hydra overrides...]

Both runs fit the first-order part by SGD with dense tables (what privacy=secagg requires), so they
train the same model the same way; the reference is that run with privacy=none. Per training round:
wall seconds of the server's training exchanges (SecAgg+: its four stages; plain: the one train
exchange) and the serialized bytes that reach the server and that it sends; the ratios are what to
read (the machine is shared). Writes outputs/bench/secagg/report.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flwr.app import MessageType

from benchmarks.report import markdown, publish
from core.config import compose_config, to_plain
from launch.recording import RecordingGrid
from launch.simulation import run_federated_simulation

OUT = "outputs/bench/secagg"
SETTINGS = {"plain": ["train.first_order_fit=sgd", "federation.table_aggregation=dense"], "secagg": ["privacy=secagg"]}


def measure(overrides: list[str], out: Path) -> dict[str, float]:
    """Per training round: seconds, MB in, MB out, and the final metrics of the run."""
    grids: list[RecordingGrid] = []

    def record(grid):
        grids.append(RecordingGrid(grid))
        return grids[-1]

    cfg = to_plain(compose_config(overrides))
    result = run_federated_simulation(cfg, out, grid_view=record)
    train = [e for e in grids[0].exchanges if e.message_type == MessageType.TRAIN]
    rounds = int(cfg["federation"]["rounds"])
    return {"seconds": sum(e.seconds for e in train) / rounds, "mb_in": sum(e.bytes_in for e in train) / rounds / 2**20,
            "mb_out": sum(e.bytes_out for e in train) / rounds / 2**20, "exchanges": len(train) / rounds,
            "purchase_auc": result.final.get("purchase", {}).get("auc", float("nan"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    out = Path(args.out).resolve()
    figures = {name: measure([*extra, *args.overrides], out / name) for name, extra in SETTINGS.items()}
    plain = figures["plain"]
    rows = [[name, f"{f['exchanges']:g}", f"{f['seconds']:.1f}", f"{f['seconds'] / plain['seconds']:.2f}",
             f"{f['mb_in']:.2f}", f"{f['mb_in'] / plain['mb_in']:.2f}", f"{f['mb_out']:.2f}",
             f"{f['mb_out'] / plain['mb_out']:.2f}", f"{f['purchase_auc']:.4f}"] for name, f in figures.items()]
    header = ["training round", "exchanges", "seconds", "x plain", "MB to server", "x plain", "MB from server",
              "x plain", "purchase AUC"]
    command = " ".join(["python -m benchmarks.secagg", *args.overrides])
    publish(f"Command: `{command}`\n\n{markdown(header, rows)}\n", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
