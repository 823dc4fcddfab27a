"""What a client sends back (core/update_codec.py): sparse rows and compressed changes decode to the
update the server would have aggregated from the whole, full-precision model."""

import numpy as np
import pytest

from core.errors import InputError
from core.update_codec import check_compression, decode_array, decode_update, encode_array, encode_update
from server_app.aggregation import ClientUpdate, aggregate, aggregate_multitask
from server_app.replies import reply_problem

RNG = np.random.default_rng(0)
GLOBAL = {"table": RNG.normal(size=(50, 4)).astype(np.float32), "dense": RNG.normal(size=(6, 9)).astype(np.float32),
          "bias": np.float32(0.5) * np.ones((), np.float32), "fitted": RNG.normal(size=(50, 1)).astype(np.float32)}
OWNERS = {name: None for name in GLOBAL}


def trained_client(touched: np.ndarray) -> dict[str, np.ndarray]:
    """A client that changed its touched rows, every dense array, and (like any trainer's optimiser
    state) rows it never looked up, which the server must ignore."""
    trained = {name: value + RNG.normal(scale=0.1, size=value.shape).astype(np.float32) for name, value in GLOBAL.items()}
    trained["fitted"] = GLOBAL["fitted"].copy()  # Newton-fitted: the node never changes it
    return trained


def through_the_wire(trained, ids, counts, examples, compression="none", sparse=True) -> ClientUpdate:
    dense, rows, scales = encode_update(GLOBAL, trained, {"table": ids} if sparse else {}, compression,
                                        ["fitted"] if sparse else [])
    arrays, values = decode_update(GLOBAL, dense, rows, {"table": ids}, scales, compression)
    arrays.update({name: GLOBAL[name] for name in ["fitted"] if name not in arrays})
    assert reply_problem(GLOBAL, arrays, {"table": (ids, counts)}, {}, values) is None
    return ClientUpdate(arrays, examples, row_counts={"table": (ids, counts)}, row_values=values)


def test_a_sparse_update_aggregates_exactly_as_the_whole_table_and_untouched_rows_keep_their_value():
    clients = [(np.array([1, 4, 7]), np.array([2., 1., 5.]), 8), (np.array([4, 9]), np.array([3., 3.]), 6)]
    whole, sparse = [], []
    for ids, counts, examples in clients:
        trained = trained_client(ids)
        whole.append(ClientUpdate(trained, examples, row_counts={"table": (ids, counts)}))
        sparse.append(through_the_wire(trained, ids, counts, examples))
    expected, got = aggregate(GLOBAL, whole, OWNERS, ["table"]), aggregate(GLOBAL, sparse, OWNERS, ["table"])
    for name in GLOBAL:
        np.testing.assert_array_equal(got[name], expected[name])
    untouched = np.setdiff1d(np.arange(50), [1, 4, 7, 9])
    np.testing.assert_array_equal(got["table"][untouched], GLOBAL["table"][untouched])
    assert not np.allclose(got["table"][[1, 4, 7, 9]], GLOBAL["table"][[1, 4, 7, 9]])


def test_sparse_rows_equal_dense_fedavg_when_every_client_touches_every_row():
    every = np.arange(50)
    updates, plain = [], []
    for examples in (5, 11, 2):
        trained = trained_client(every)
        updates.append(through_the_wire(trained, every, np.full(50, float(examples)), examples))
        plain.append(ClientUpdate(trained, examples))
    rows, dense = aggregate(GLOBAL, updates, OWNERS, ["table"]), aggregate_multitask(GLOBAL, plain, OWNERS)
    for name in GLOBAL:
        np.testing.assert_allclose(rows[name], dense[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compression,tolerance", [("float16", 1e-3), ("int8", 1 / 254)])
def test_a_compressed_change_decodes_within_its_precision(compression, tolerance):
    sent = RNG.normal(size=(30, 16)).astype(np.float32)
    change = RNG.normal(scale=RNG.uniform(0.001, 1.0, size=(30, 1)), size=(30, 16)).astype(np.float32)
    wire, scale = encode_array(sent + change, sent, compression)
    assert wire.dtype == {"float16": np.float16, "int8": np.int8}[compression]
    decoded = decode_array(wire, scale, sent, compression)
    assert decoded.dtype == np.float32
    # int8: per row, at most half a step of that row's own scale (max |change| / 127)
    bound = tolerance * np.abs(change).max(axis=1, keepdims=True) + 1e-6
    assert (np.abs(decoded - (sent + change)) <= bound).all()


def test_int8_keeps_one_scale_per_array_for_narrow_rows():
    sent = np.zeros((40, 1), np.float32)
    _, scale = encode_array(sent + 1.0, sent, "int8")
    assert scale.shape == (1,)  # a float32 scale per one-value row would cost more than float32 itself


def test_a_non_finite_change_reaches_the_server_as_one_and_is_rejected():
    trained = trained_client(np.arange(3))
    trained["dense"][2, 3] = np.nan
    for compression in ("none", "float16", "int8"):
        dense, rows, scales = encode_update(GLOBAL, trained, {}, compression)
        arrays, _ = decode_update(GLOBAL, dense, rows, {}, scales, compression)
        assert "non-finite" in reply_problem(GLOBAL, arrays, {}, {}), compression


def test_an_unreadable_update_is_refused():
    dense, rows, scales = encode_update(GLOBAL, trained_client(np.arange(3)), {"table": np.array([0, 2])}, "int8")
    with pytest.raises(ValueError, match="without its scales"):
        decode_update(GLOBAL, dense, rows, {"table": np.array([0, 2])}, {}, "int8")
    with pytest.raises(ValueError, match="rows of 'table'"):
        decode_update(GLOBAL, dense, rows, {"table": np.array([0, 2, 3])}, scales, "int8")
    with pytest.raises(ValueError, match="outside"):
        decode_update(GLOBAL, dense, rows, {"table": np.array([0, 99])}, scales, "int8")
    with pytest.raises(InputError, match="federation.compression must be one of none, float16, int8, got 'zip'"):
        check_compression("zip")


def test_privacy_refuses_compression(tiny_cfg):
    from core.privacy import PrivacySettings
    cfg = tiny_cfg("privacy=dp", "train.first_order_fit=sgd", "federation.table_aggregation=dense",
                   "federation.compression=int8")
    with pytest.raises(InputError, match="privacy=dp needs federation.compression=none"):
        PrivacySettings.from_config(cfg)
