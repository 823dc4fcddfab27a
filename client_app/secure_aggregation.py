"""The node's side of secure aggregation (privacy=secagg): Flower's `secaggplus_mod` around the train
handler for the messages of a SecAgg+ round, and the answer it masks: the trained state as one
weighted vector (core/secure_sum.py) in the legacy FitRes shape the mod reads.

Flower 1.42 offers SecAgg+ only through its legacy API (the server's SecAggPlusWorkflow, FitIns and
FitRes): a SecAgg+ round's train request carries `fitins.parameters`/`fitins.config` instead of this
project's records, and the mod masks only `fitres.parameters`, clearing every other array record.
"""

from __future__ import annotations

from typing import Any, Mapping

import flwr.compat.common.recorddict_compat as compat
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from client_app.merchant import train_content
from core import protocol
from core.secure_sum import encode_weighted
from tasks.experiment import experiment_for
from tasks.metrics import split_counts, unflatten
from tasks.plan import RunPlan
from tasks.state import joint_owners, joint_state

FITINS_PARAMETERS = "fitins.parameters"


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """SecAgg+'s mod for the messages of a SecAgg+ round; every other message passes untouched."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure_round(msg: Message) -> bool:
    return FITINS_PARAMETERS in msg.content.array_records


def secure_train_reply(msg: Message, node_config: Mapping[str, Any], manifest: str | None,
                       cfg: Mapping[str, Any], kept: RecordDict | None = None) -> Message:
    """Train as for any round, then answer with the weighted vector as legacy FitRes parameters."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    bound = float(config.pop(protocol.WEIGHT_BOUND))
    experiment = experiment_for(cfg, RunPlan.from_json(str(config[protocol.PLAN])))
    model, weighting = experiment.new_model(), experiment.new_weighting()
    names, owners = list(joint_state(model, weighting)), joint_owners(model, weighting)  # the server's order
    arrays = ArrayRecord({name: Array(value) for name, value in zip(names, parameters_to_ndarrays(fitins.parameters))})
    content = train_content(RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: ConfigRecord(config)}),
                            node_config, manifest, cfg, kept)
    metrics = dict(content.metric_records[protocol.METRICS])
    _, label_counts = split_counts(unflatten(metrics))
    weights = {None: float(metrics[protocol.NUM_EXAMPLES]), **{t: float(n) for t, n in label_counts.items()}}
    state = {name: array.numpy() for name, array in content.array_records[protocol.ARRAYS].items()}
    vector = encode_weighted({name: state[name] for name in names}, owners, weights, bound)
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(vector), 1, metrics)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
