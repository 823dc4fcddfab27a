"""Test-only faulty merchants: a Flower mod around the real ClientApp breaks chosen simulated nodes.

`raise`: the node's train handler raises (a crashed client); `nan`: it trains for real, then its reply
carries a NaN; `shape`: its reply's first array has one row too many; `drop_masked`: under
privacy=secagg it crashes when SecAgg+ asks for its masked vector (after the keys are shared);
`refit`: it trains and evaluates, and crashes when asked for its refit sums at the end (refit_biases,
refit_embeddings).
Everything else is the real client code path. Run a federated simulation with faults, as the `merchant-fl` door would:

    python -m tests.faulty_clients 1=raise,2=nan OUTPUT_DIR [hydra overrides...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from core import protocol

FAULTS = ("raise", "nan", "shape", "drop_masked", "refit")


def fault_mod(faults: Mapping[int, str]) -> Callable[[Message, Context, Callable], Message]:
    """A mod breaking the train (or refit) replies of the simulated nodes whose partition id `faults` names."""
    def mod(msg: Message, context: Context, call_next: Callable) -> Message:
        fault = faults.get(int(context.node_config.get(protocol.PARTITION_ID, -1)))
        if fault == "refit" and msg.metadata.message_type == f"{MessageType.QUERY}.{protocol.REFIT}":
            raise RuntimeError("injected fault: this merchant's node crashed while summing its refit statistics")
        if fault in (None, "refit") or msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        if fault == "drop_masked":
            configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS:
                raise RuntimeError("injected fault: this merchant's node crashed before sending its masked vector")
            return call_next(msg, context)
        if fault == "raise":
            raise RuntimeError("injected fault: this merchant's node crashed while training")
        reply = call_next(msg, context)
        arrays = {name: array.numpy().copy() for name, array in reply.content.array_records[protocol.ARRAYS].items()}
        name = next(n for n, v in arrays.items() if np.issubdtype(v.dtype, np.floating))
        if fault == "nan":
            arrays[name].reshape(-1)[0] = np.nan
        else:
            arrays[name] = np.concatenate([arrays[name], arrays[name][:1]])
        reply.content[protocol.ARRAYS] = ArrayRecord({n: Array(v) for n, v in arrays.items()})
        return reply
    return mod


def main(argv: list[str]) -> None:
    from core.config import compose_config, to_plain
    from core.errors import InputError
    from launch.simulation import run_federated_simulation
    from server_app.strategy import RoundFailed

    faults = {int(k): v for k, v in (pair.split("=") for pair in argv[0].split(","))}
    assert set(faults.values()) <= set(FAULTS), faults
    try:
        run_federated_simulation(to_plain(compose_config(argv[2:])), Path(argv[1]), [fault_mod(faults)])
    except (InputError, RoundFailed) as exc:
        print(f"merchant-fl: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
