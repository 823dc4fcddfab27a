"""What one merchant's node does with a server request: report its data's aggregates (setup), train
or evaluate on its own splits, or sum its train rows' statistics at the round's averaged model. It
reads only the file its node config names; counts, sums, metrics and model updates are all that
leave this module."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client_app.local_privacy import outgoing_state
from client_app.optimizer_state import load_optimizer_state, save_optimizer_state
from core import protocol
from core.privacy import PrivacySettings
from core.update_codec import check_compression, encode_update
from core.errors import InputError
from data.partition import partition_for_node, partition_table
from data.shards import PreparedMerchant, prepare_merchant
from tasks.embedding_newton import embedding_statistics, pack_statistics, refit_embedding_statistics
from tasks.experiment import Experiment, experiment_for
from tasks.metrics import flatten, with_counts
from tasks.models import MultiTaskModel
from tasks.personalization import personalization_of
from tasks.plan import RunPlan
from tasks.ranking import evaluate_merchant
from tasks.registry import resolve_tasks
from tasks.state import joint_parameters, joint_state, load_joint_state
from tasks.training import make_optimizer, oracle_score, proximal_mu, shuffle_seed, trained_rows
from tasks.wide import WideStats, averaged_by_rows, newton_fitted, refit_statistics, train_round
from tasks.weighting import LossWeighting


def data_source(node_config: Mapping[str, Any], manifest: str | None, data_cfg: Mapping[str, Any]
                ) -> tuple[Path, str | None]:
    """(file, merchant id if known) of this node: `data-path` (+ optional `merchant-id`) when deployed;
    in simulation the file of its partition id, from the manifest (partitioning the run's table here
    when none was given, as `flwr run .` does)."""
    if protocol.DATA_PATH in node_config:
        merchant = node_config.get(protocol.MERCHANT_ID)
        return Path(str(node_config[protocol.DATA_PATH])), None if merchant is None else str(merchant)
    if protocol.PARTITION_ID in node_config:
        partition = partition_for_node(manifest or partition_table(data_cfg), int(node_config[protocol.PARTITION_ID]),
                                       int(node_config[protocol.NUM_PARTITIONS]))
        return partition.path, partition.merchant_id
    raise InputError("this SuperNode has no data: start it with --node-config 'data-path=\"/path/to/file.parquet\"'")


def node_data(node_config: Mapping[str, Any], manifest: str | None, cfg: Mapping[str, Any]) -> PreparedMerchant:
    """This node's prepared data (validated, split and cached on first use)."""
    path, merchant = data_source(node_config, manifest, cfg["data"])
    return prepare_merchant(path, cfg["data"], merchant)


def setup_reply(msg: Message, node_config: Mapping[str, Any], manifest: str | None,
                cfg: Mapping[str, Any]) -> Message:
    """The node's aggregates, or why it cannot take part (one line, with its merchant where known)."""
    merchant = None
    try:
        path, merchant = data_source(node_config, manifest, cfg["data"])
        data = prepare_merchant(path, cfg["data"], merchant)
    except InputError as exc:
        merchant = getattr(exc, "merchant", None) or merchant
        refusal = {protocol.SETUP_ERROR: str(exc), protocol.MERCHANT_ID: merchant or ""}
        return Message(RecordDict({protocol.SETUP: ConfigRecord(refusal)}), reply_to=msg)
    content = RecordDict({protocol.SETUP: ConfigRecord(data.summary.to_flat())})
    test = data.shard("test")
    if test.oracle:  # synthetic data: what its ground truth scores, for the report
        metrics, counts = oracle_score(test, resolve_tasks(None, data.summary.label_columns))
        content[protocol.ORACLE] = MetricRecord(flatten(with_counts(metrics, counts)))
    return Message(content, reply_to=msg)


def _experiment(request: RecordDict, cfg: Mapping[str, Any]) -> Experiment:
    """The model every node builds alike: from the plan the server fixed and sent."""
    return experiment_for(cfg, RunPlan.from_json(str(request.config_records[protocol.CONFIG][protocol.PLAN])))


def _trainable_from(request: RecordDict, experiment: Experiment) -> tuple[MultiTaskModel, LossWeighting]:
    """The global model and loss weighting, as the server sent them."""
    model, weighting = experiment.new_model(), experiment.new_weighting()
    load_joint_state(model, weighting, request.array_records[protocol.ARRAYS].to_torch_state_dict())
    return model.to(experiment.device), weighting.to(experiment.device)


def train_reply(msg: Message, node_config: Mapping[str, Any], manifest: str | None, cfg: Mapping[str, Any],
                kept: RecordDict | None = None) -> Message:
    return Message(train_content(msg.content, node_config, manifest, cfg, kept), reply_to=msg)


def train_content(request: RecordDict, node_config: Mapping[str, Any], manifest: str | None,
                  cfg: Mapping[str, Any], kept: RecordDict | None = None) -> RecordDict:
    """A train request's answer: the trained state, metrics and counts (and the aggregate records).
    `kept`: what this node keeps between rounds (Flower's Context.state), where its optimizer state
    lives under train.keep_optimizer_state (client_app/optimizer_state.py)."""
    experiment = _experiment(request, cfg)
    cfg = experiment.cfg  # train.*=auto decided by the plan's tasks
    data = node_data(node_config, manifest, cfg)
    model, weighting = _trainable_from(request, experiment)
    optimizer = make_optimizer(model, weighting, cfg["train"])
    keep = kept is not None and bool(cfg["train"].get("keep_optimizer_state", False))
    if keep:
        load_optimizer_state(kept, optimizer, joint_parameters(model, weighting))
    config = request.config_records[protocol.CONFIG]
    server_round = int(config.get(protocol.SERVER_ROUND, 0))
    merchant_index = int(config.get(protocol.MERCHANT_INDEX, 0))
    seed = shuffle_seed(int(cfg["seed"]), server_round, merchant_index)
    shard = data.shard("train")
    report, wide = train_round(model, weighting, optimizer, shard, experiment.tasks, cfg["train"], seed,
                               experiment.device, server_round, proximal_mu(cfg.get("strategy")),
                               row_totals_of(request, model))
    if keep:
        save_optimizer_state(kept, optimizer, joint_parameters(model, weighting), model.id_tables())
    metrics = flatten(with_counts({t: {"loss": v} for t, v in report.losses.items()}, report.label_counts))
    metrics[protocol.NUM_EXAMPLES] = report.examples
    content = RecordDict({protocol.METRICS: MetricRecord(metrics),
                          protocol.MERCHANT: ConfigRecord({protocol.MERCHANT_ID: data.merchant_id})})
    if wide:  # only sums per bias row: the server adds them and takes the Newton step
        content[protocol.WIDE_STATS] = wide_stats_record(wide)
    rows = {}
    tables = averaged_by_rows(model, cfg)
    if tables:
        id_tables = model.id_tables()
        rows = trained_rows(shard, experiment.tasks, {name: id_tables[name] for name in tables})
        content[protocol.ROW_COUNTS] = ArrayRecord(
            {name: Array(np.stack([ids, counts]).astype(np.int64)) for name, (ids, counts) in rows.items()})
    content.update(update_records(request.array_records[protocol.ARRAYS], joint_state(model, weighting),
                                  {name: ids for name, (ids, _) in rows.items()}, newton_fitted(model, cfg["train"]),
                                  cfg, server_round, merchant_index))
    return content


def row_totals_of(request: RecordDict, model: MultiTaskModel) -> dict[int, np.ndarray] | None:
    """The server's row totals (protocol.ROW_TOTALS) by feature column; None before it has any."""
    if protocol.ROW_TOTALS not in request.array_records:
        return None
    columns = {name: column for name, (column, _) in model.id_tables().items()}
    return {columns[name]: array.numpy() for name, array in request.array_records[protocol.ROW_TOTALS].items()
            if name in columns}


def update_records(sent: ArrayRecord, trained: Mapping[str, torch.Tensor], rows: Mapping[str, np.ndarray],
                   fitted_on_server: Collection[str], cfg: Mapping[str, Any], server_round: int,
                   merchant_index: int) -> dict[str, ArrayRecord]:
    """The records that carry a trained model: privatised whole (privacy=dp|ldp), else encoded by
    core/update_codec.py; under federation.sparse_updates row tables travel as their `rows` only and
    the biases the server fits from statistics (`fitted_on_server`) not at all."""
    if PrivacySettings.from_config(cfg).mode != "none":
        return {protocol.ARRAYS: outgoing_state(sent, trained, cfg, server_round, merchant_index)}
    fed = cfg["federation"]
    sparse = bool(fed.get("sparse_updates", True))
    dense, table_rows, scales = encode_update({name: array.numpy() for name, array in sent.items()},
                                              {name: value.numpy() for name, value in trained.items()},
                                              rows if sparse else {},
                                              check_compression(str(fed.get("compression", "none"))),
                                              fitted_on_server if sparse else ())
    records = {protocol.ARRAYS: dense, protocol.TABLE_ROWS: table_rows, protocol.SCALES: scales}
    return {key: ArrayRecord({name: Array(value) for name, value in arrays.items()})
            for key, arrays in records.items() if arrays or key == protocol.ARRAYS}


def curvature_reply(msg: Message, node_config: Mapping[str, Any], manifest: str | None,
                    cfg: Mapping[str, Any]) -> Message:
    """The sums per embedding row of this merchant's train rows at the model sent (the round's average):
    the server adds every merchant's and takes the Newton step (tasks/embedding_newton.py)."""
    experiment = _experiment(msg.content, cfg)
    data = node_data(node_config, manifest, experiment.cfg)
    model, _ = _trainable_from(msg.content, experiment)
    stats = embedding_statistics(model, data.shard("train"), experiment.tasks, experiment.device)
    return _statistics_reply(msg, data.merchant_id, protocol.EMBEDDING_STATS, embedding_stats_record(stats))


def refit_reply(msg: Message, node_config: Mapping[str, Any], manifest: str | None,
                cfg: Mapping[str, Any]) -> Message:
    """The sums of this merchant's train and validation rows at the finished model sent, per bias row or
    per embedding row as the query asks (protocol.REFIT_PART): the server adds every merchant's and
    refits those parameters (tasks/experiment.py refit)."""
    experiment = _experiment(msg.content, cfg)
    data = node_data(node_config, manifest, experiment.cfg)
    model, _ = _trainable_from(msg.content, experiment)
    shards = [data.shard("train"), data.shard("val")]
    part = str(msg.content.config_records[protocol.CONFIG].get(protocol.REFIT_PART, protocol.REFIT_BIAS))
    if part == protocol.REFIT_EMBEDDING:
        stats = refit_embedding_statistics(model, shards, experiment.tasks, experiment.device)
        return _statistics_reply(msg, data.merchant_id, protocol.EMBEDDING_STATS, embedding_stats_record(stats))
    if part != protocol.REFIT_BIAS:
        raise InputError(f"refit query for {part!r}: this node sums {protocol.REFIT_BIAS} or {protocol.REFIT_EMBEDDING}")
    stats = refit_statistics(model, shards, experiment.tasks, experiment.device)
    return _statistics_reply(msg, data.merchant_id, protocol.WIDE_STATS, wide_stats_record(stats))


def _statistics_reply(msg: Message, merchant_id: str, key: str, record: ArrayRecord) -> Message:
    return Message(RecordDict({protocol.MERCHANT: ConfigRecord({protocol.MERCHANT_ID: merchant_id}), key: record}),
                   reply_to=msg)


def embedding_stats_record(stats: WideStats) -> ArrayRecord:
    """Embedding statistics as they travel (tasks/embedding_newton.py pack_statistics)."""
    return ArrayRecord({name: Array(value) for name, value in pack_statistics(stats).items()})


def wide_stats_record(stats: WideStats) -> ArrayRecord:
    """Bias statistics as they travel: per table its row ids, gradient and curvature sums stacked."""
    return ArrayRecord({name: Array(np.stack([ids.astype(np.float64), g, h])) for name, (ids, g, h) in stats.items()})


def evaluate_reply(msg: Message, node_config: Mapping[str, Any], manifest: str | None,
                   cfg: Mapping[str, Any]) -> Message:
    experiment = _experiment(msg.content, cfg)
    data = node_data(node_config, manifest, cfg)
    model, _ = _trainable_from(msg.content, experiment)
    with_ranking = bool(int(msg.content.config_records[protocol.CONFIG].get(protocol.RANKING, 0)))
    # ranking filters the user's train items; personalization fits the merchant's offsets or heads on them
    train = data.shard("train") if with_ranking or personalization_of(cfg)[0] != "none" else None
    test, val = data.shard("test"), data.shard("val")
    scores = evaluate_merchant(model, experiment, train, test, val, with_ranking)
    content = RecordDict({protocol.MERCHANT: ConfigRecord({protocol.MERCHANT_ID: data.merchant_id})})
    for key, (metrics_by_task, counts), split in zip((protocol.METRICS, protocol.VAL_METRICS), scores, (test, val)):
        metrics = flatten(with_counts(metrics_by_task, counts))
        metrics[protocol.NUM_EXAMPLES] = len(split)
        content[key] = MetricRecord(metrics)
    return Message(content, reply_to=msg)
