"""What one merchant does with a server request: train or evaluate on its own shard, reply with
arrays and per-task counts and metrics. Nothing else of the merchant's data leaves this module."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from core import protocol
from core.errors import InputError
from tasks.experiment import Experiment, open_experiment
from tasks.metrics import flatten, with_counts
from tasks.models import MultiTaskModel
from tasks.ranking import evaluate_merchant
from tasks.state import joint_state, load_joint_state
from tasks.training import make_optimizer, shuffle_seed, trained_rows
from tasks.wide import averaged_by_rows, train_round
from tasks.weighting import LossWeighting


def merchant_of(node_config: Mapping[str, Any], experiment: Experiment) -> tuple[int, str]:
    """(index, id) of this node's merchant: `merchant-id` in the node config, else the partition id."""
    ids = experiment.index.merchant_ids
    if protocol.MERCHANT_ID in node_config:
        merchant = str(node_config[protocol.MERCHANT_ID])
        if merchant not in ids:
            raise InputError(f"node config merchant-id={merchant!r} is not a merchant of the data")
        return ids.index(merchant), merchant
    partitions = int(node_config["num-partitions"])
    if partitions != len(ids):
        raise InputError(f"{partitions} SuperNodes for {len(ids)} merchants; run one SuperNode per merchant")
    partition = int(node_config["partition-id"])
    return partition, ids[partition]


def _trainable_from(msg: Message, experiment: Experiment) -> tuple[MultiTaskModel, LossWeighting]:
    """The global model and loss weighting, as the server sent them."""
    model, weighting = experiment.new_model(), experiment.new_weighting()
    load_joint_state(model, weighting, msg.content.array_records[protocol.ARRAYS].to_torch_state_dict())
    return model.to(experiment.device), weighting.to(experiment.device)


def train_reply(msg: Message, node_config: Mapping[str, Any], cfg: Mapping[str, Any]) -> Message:
    experiment = open_experiment(cfg)
    k, merchant = merchant_of(node_config, experiment)
    model, weighting = _trainable_from(msg, experiment)
    optimizer = make_optimizer(model, weighting, cfg["train"])
    server_round = int(msg.content.config_records[protocol.CONFIG].get("server-round", 0))
    shard = experiment.shard(merchant, "train")
    report, wide = train_round(model, weighting, optimizer, shard, experiment.tasks, cfg["train"],
                               shuffle_seed(int(cfg["seed"]), server_round, k), experiment.device, server_round)
    metrics = flatten(with_counts({t: {"loss": v} for t, v in report.losses.items()}, report.label_counts))
    metrics[protocol.NUM_EXAMPLES] = report.examples
    content = RecordDict({protocol.ARRAYS: ArrayRecord(joint_state(model, weighting)),
                          protocol.METRICS: MetricRecord(metrics),
                          protocol.MERCHANT: ConfigRecord({protocol.MERCHANT_ID: merchant})})
    if wide:  # only sums per bias row: the server adds them and takes the Newton step
        content[protocol.WIDE_STATS] = ArrayRecord(
            {name: Array(np.stack([ids.astype(np.float64), g, h])) for name, (ids, g, h) in wide.items()})
    tables = averaged_by_rows(model, cfg)
    if tables:
        rows = trained_rows(shard, experiment.tasks, {name: model.id_tables()[name] for name in tables})
        content[protocol.ROW_COUNTS] = ArrayRecord(
            {name: Array(np.stack([ids, counts]).astype(np.int64)) for name, (ids, counts) in rows.items()})
    return Message(content, reply_to=msg)


def evaluate_reply(msg: Message, node_config: Mapping[str, Any], cfg: Mapping[str, Any]) -> Message:
    experiment = open_experiment(cfg)
    _, merchant = merchant_of(node_config, experiment)
    model, _ = _trainable_from(msg, experiment)
    test, val = experiment.shard(merchant, "test"), experiment.shard(merchant, "val")
    with_ranking = bool(int(msg.content.config_records[protocol.CONFIG].get(protocol.RANKING, 0)))
    scores = evaluate_merchant(model, experiment, merchant, test, val, with_ranking)
    content = RecordDict({protocol.MERCHANT: ConfigRecord({protocol.MERCHANT_ID: merchant})})
    for key, (metrics_by_task, counts), split in zip((protocol.METRICS, protocol.VAL_METRICS), scores, (test, val)):
        metrics = flatten(with_counts(metrics_by_task, counts))
        metrics[protocol.NUM_EXAMPLES] = len(split)
        content[key] = MetricRecord(metrics)
    return Message(content, reply_to=msg)
