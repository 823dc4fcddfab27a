"""What leaves a merchant, proven on a real simulated run: every message that reaches the server is
recorded (a pass-through wrapper around Flower's grid) and checked to hold only the model's arrays at
the model's shapes, scalar metrics and counts, and the known aggregate records, never a row, a raw
user or item id, or a label vector. What they do still carry is pinned down too: the hashed rows a
merchant touched (WIDE_STATS, ROW_COUNTS, and EMBEDDING_STATS under train.embedding_newton) unless
privacy=dp|ldp, which leaves only the model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core import protocol
from data.partition import partition_table, read_manifest
from data.shards import prepare_merchant
from tasks.experiment import open_experiment
from tasks.state import joint_state
from tasks.wide import newton_fitted

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]

ARRAY_RECORDS = {protocol.ARRAYS, protocol.TABLE_ROWS, protocol.WIDE_STATS, protocol.ROW_COUNTS,
                 protocol.EMBEDDING_STATS}
METRIC_RECORDS = {protocol.METRICS, protocol.VAL_METRICS, protocol.ORACLE}
CONFIG_RECORDS = {protocol.MERCHANT, protocol.SETUP}


def merchants_data(cfg):
    """Per merchant: its raw rows (as its file holds them) and its prepared splits (hashed features, labels)."""
    out = {}
    for part in read_manifest(partition_table(cfg["data"])):
        prepared = prepare_merchant(part.path, cfg["data"], part.merchant_id)
        out[part.merchant_id] = (pd.read_parquet(part.path), {s: prepared.shard(s) for s in ("train", "val", "test")})
    return out


def check_row_ids(ids: np.ndarray, name: str, train_features: np.ndarray, tables: dict[str, tuple[int, int]]) -> None:
    """Row ids of an aggregate record: sorted, unique, hashed buckets of rows this merchant trained on
    (`train_features`: the rows it sums).
    `tables`: table name -> (the input column indexing it, its rows)."""
    assert np.all(ids == np.round(ids)) and np.all(np.diff(ids) > 0), name
    if len(ids) == 0:  # a task this merchant holds no label of
        return
    if name.startswith("first_order.bias."):
        assert ids.tolist() == [0]  # a task's global bias: one row
        return
    column, rows = tables[name]
    assert ids.min() >= 0 and ids.max() < rows, name
    assert set(ids.astype(np.int64)) <= set(train_features[:, column].tolist()), name


def label_vectors(splits) -> list[np.ndarray]:
    return [y for shard in splits.values() for y in shard.labels.values()]


def holds_a_label_vector(array: np.ndarray, labels: list[np.ndarray]) -> bool:
    """Whether the array, or one of its rows, holds some split's label column (in any order)."""
    lengths = {len(y) for y in labels}
    candidates = [array.reshape(-1)] if array.size in lengths else []
    if array.ndim > 1 and array.shape[-1] in lengths:
        candidates += list(array.reshape(-1, array.shape[-1]))
    return any(len(c) == len(y) and np.array_equal(np.sort(c.astype(np.float64)), np.sort(y.astype(np.float64)),
                                                  equal_nan=True)
               for c in candidates for y in labels)


@pytest.mark.parametrize("privacy", ["none", "ldp"])
def test_only_model_arrays_scalars_and_known_aggregates_reach_the_server(recorded_federated_run, privacy):
    """On the shared recorded run of each privacy setting (tests/conftest.py recorded_federated_run:
    TINY, a validation split, the default wire format)."""
    run = recorded_federated_run(privacy)
    cfg, received = run.cfg, run.received
    assert cfg["privacy"]["mode"] == privacy and cfg["data"]["val_fraction"] == 0.2
    if privacy == "ldp":  # a recalibration fitted on exact validation sums would bypass the noise
        assert json.loads((run.dir / "metrics.json").read_text())["calibration"] == {}
    experiment = open_experiment(cfg)
    model = experiment.new_model()
    model_state = {k: tuple(v.shape) for k, v in joint_state(model, experiment.new_weighting()).items()}
    fitted = newton_fitted(model, cfg["train"])
    tables = {name: (column, model_state[name][0]) for name, (column, _) in model.id_tables().items()}
    data = merchants_data(cfg)
    raw_ids = {str(v) for raw, _ in data.values() for column in ("user_id", "item_id") for v in raw[column].unique()}
    label_names = {"rating", "purchase", "click"}
    seen_records: set[str] = set()

    assert len(received) >= 4 * (1 + 2 * 2 + 1)  # setup + (train, evaluate) x 2 rounds + evaluate of the kept round
    for reply in received:
        assert not reply.has_error(), reply.error.reason
        content = reply.content
        assert set(content.array_records) <= ARRAY_RECORDS
        assert set(content.metric_records) <= METRIC_RECORDS
        assert set(content.config_records) <= CONFIG_RECORDS
        seen_records |= set(content.array_records) | set(content.metric_records) | set(content.config_records)
        # Which merchant answered: the only id that travels.
        merchant = str(content.config_records[protocol.MERCHANT][protocol.MERCHANT_ID]) \
            if protocol.MERCHANT in content.config_records else str(content.config_records[protocol.SETUP]["merchant-id"])
        raw, splits = data[merchant]
        for record in content.config_records.values():
            for key, value in record.items():
                values = value if isinstance(value, list) else [value]
                assert all(isinstance(v, (int, float, str)) for v in values), key
                strings = {v for v in values if isinstance(v, str)} | {key}
                assert strings.isdisjoint(raw_ids), key
                assert {v for v in values if isinstance(v, str)} <= {merchant} | label_names, key
        for record in content.metric_records.values():
            assert all(isinstance(v, (int, float)) for v in record.values())  # scalars, no lists
        labels = label_vectors(splits)
        for name, record in content.array_records.items():
            arrays = {k: a.numpy() for k, a in record.items()}
            if name == protocol.ARRAYS:  # the model's state at the model's shapes; under privacy=none less
                # the tables sent as their trained rows and the biases the server fits from statistics
                apart = set(content.array_records.get(protocol.TABLE_ROWS, {})) | (fitted if privacy == "none" else set())
                assert {k: a.shape for k, a in arrays.items()} == {k: v for k, v in model_state.items() if k not in apart}
            if name == protocol.TABLE_ROWS:  # the values of exactly the rows its row counts name
                counted = content.array_records[protocol.ROW_COUNTS]
                for key, rows in arrays.items():
                    assert rows.shape == (counted[key].numpy().shape[1],) + model_state[key][1:], key
            for key, array in arrays.items():
                assert not holds_a_label_vector(array, labels), (name, key)
            # a refit reply's (refit_biases, refit_embeddings) sums are over the train and validation rows
            refit = reply.metadata.message_type == f"query.{protocol.REFIT}"
            rows = np.concatenate([splits["train"].features, splits["val"].features]) if refit \
                else splits["train"].features
            if name == protocol.WIDE_STATS:  # per touched bias row: (id, gradient sum, curvature sum)
                for key, stacked in arrays.items():
                    assert stacked.shape[0] == 3 and stacked.dtype == np.float64
                    assert not (refit and key.startswith("first_order.bias.")), key
                    check_row_ids(stacked[0], key, rows, tables)
                    assert np.all(stacked[2] >= 0)  # curvature sums: of p (1 - p), or 1 per rating row
            if name == protocol.EMBEDDING_STATS:  # per looked-up embedding row: (id, G [d], H [d, d]) flat
                for key, packed in arrays.items():
                    dim = model_state[key][1]
                    assert packed.dtype == np.float64 and packed.shape[1] == 1 + dim + dim * dim, key
                    check_row_ids(packed[:, 0], key, rows, tables)
                    curvature = packed[:, 1 + dim:].reshape(-1, dim, dim)
                    assert np.all(np.linalg.eigvalsh(curvature) > -1e-9)  # sums of h J J^T, h >= 0
            if name == protocol.ROW_COUNTS:  # per touched table row: (id, how often it was looked up)
                for key, pair in arrays.items():
                    assert pair.shape[0] == 2 and pair.dtype == np.int64
                    check_row_ids(pair[0], key, splits["train"].features, tables)
                    assert np.all(pair[1] >= 1) and pair[1].sum() <= len(splits["train"])

    row_records = {protocol.WIDE_STATS, protocol.ROW_COUNTS, protocol.TABLE_ROWS, protocol.EMBEDDING_STATS}
    if privacy == "none":  # what the default still reveals: the hashed rows each merchant touched
        assert row_records <= seen_records
    else:  # under DP only the (clipped, noised) model leaves a merchant
        assert not seen_records & row_records


def test_train_requests_carry_the_row_totals_of_the_counts_already_received(recorded_federated_run):
    """Round 1's requests carry none (nothing counted yet); each later one carries, per embedding table,
    the sum of every merchant's row counts from its earlier replies: no new data reaches the server,
    and a merchant learns only sums over all merchants."""
    run = recorded_federated_run("none")
    model = open_experiment(run.cfg).new_model()
    embedding_tables = {name for name, (_, task) in model.id_tables().items() if task is None}
    train_requests = [m for m in run.sent if m.metadata.message_type == "train"]
    by_round: dict[int, list] = {}
    for message in train_requests:
        by_round.setdefault(int(message.content.config_records[protocol.CONFIG][protocol.SERVER_ROUND]), []).append(message)
    assert sorted(by_round) == [1, 2]
    assert all(protocol.ROW_TOTALS not in m.content.array_records for m in by_round[1])
    expected = {}
    first_round_replies = [r for r in run.received if r.metadata.message_type == "train"][:len(by_round[1])]
    for reply in first_round_replies:
        for name, pair in reply.content.array_records[protocol.ROW_COUNTS].items():
            if name in embedding_tables:
                ids, counts = pair.numpy()
                total = expected.setdefault(name, np.zeros(model.state_dict()[name].shape[0]))
                np.add.at(total, ids, counts)
    assert set(expected) == embedding_tables
    for message in by_round[2]:
        sent = {k: a.numpy() for k, a in message.content.array_records[protocol.ROW_TOTALS].items()}
        assert set(sent) == embedding_tables
        for name, total in expected.items():
            np.testing.assert_array_equal(sent[name], total.astype(np.float32))
