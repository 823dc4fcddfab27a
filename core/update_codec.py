"""How a trained model update travels from a node to the server (federation.sparse_updates and
federation.compression), for both sides in one place: plain array functions, tested directly.

Sparse: an id-indexed table averaged row by row (federation.table_aggregation=rows) travels as the
values of the rows the node trained only, in the order of its row counts (the ROW_COUNTS record
already names them); the server only ever reads those rows, so the round is the same as with the
whole table, at a fraction of the bytes when a merchant touches few of a large catalogue's rows.
The per-id biases fitted by Newton steps (train.first_order_fit=newton) are not sent at all: the node
never changes them, its statistics (WIDE_STATS) are what the server fits them from.

Compression: every float array travels as its change from the global model the node was sent,
in float16, or in int8 with one float32 scale per row (per array for vectors): q = round(delta /
scale), scale = max |delta| / 127. The server adds the decoded change back to its global model.
"""

from __future__ import annotations

from typing import Collection, Mapping

import numpy as np

from core.errors import InputError

COMPRESSIONS = ("none", "float16", "int8")
INT8_MAX = 127.0
MIN_ROW_FOR_SCALE = 8  # below, a float32 scale per row would cost more than the int8 saves


def check_compression(compression: str) -> str:
    if compression not in COMPRESSIONS:
        raise InputError(f"federation.compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    return compression


def _row_scales(delta: np.ndarray) -> np.ndarray:
    """One scale per row of a matrix whose rows hold at least MIN_ROW_FOR_SCALE values (an embedding
    table, a layer's weights), else one for the array (a vector, a table of per-id biases), never zero."""
    per_row = delta.ndim >= 2 and delta[0].size >= MIN_ROW_FOR_SCALE
    flat = delta.reshape(len(delta), -1) if per_row else delta.reshape(1, -1)
    scale = np.abs(flat).max(axis=1, initial=0.0) / INT8_MAX
    scale = np.where(scale > 0, scale, 1.0)
    # a non-finite change must reach the server as one (it rejects the reply), not as a bounded int
    return np.where(np.isfinite(flat).all(axis=1), scale, np.nan).astype(np.float32)


def _broadcast(scale: np.ndarray, ndim: int) -> np.ndarray:
    return scale.reshape(()) if scale.size == 1 else scale.reshape((-1,) + (1,) * (ndim - 1))


def encode_array(trained: np.ndarray, sent: np.ndarray, compression: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(what travels, its int8 scales or None). Integer arrays (counters) travel as they are."""
    if compression == "none" or not np.issubdtype(trained.dtype, np.floating):
        return trained, None
    delta = np.asarray(trained.astype(np.float32) - sent.astype(np.float32))  # 0-d stays an array
    if compression == "float16":
        return delta.astype(np.float16), None
    scale = _row_scales(delta)
    with np.errstate(invalid="ignore"):
        q = np.nan_to_num(np.rint(delta / _broadcast(scale, delta.ndim)).clip(-INT8_MAX, INT8_MAX))
    return np.asarray(q).astype(np.int8), scale


def decode_array(value: np.ndarray, scale: np.ndarray | None, sent: np.ndarray, compression: str) -> np.ndarray:
    """The trained array back, in the global model's dtype (what `encode_array` was given, up to rounding)."""
    if compression == "none" or not np.issubdtype(sent.dtype, np.floating):
        return value
    expected = np.int8 if compression == "int8" else np.float16
    if value.dtype != expected:
        raise ValueError(f"a {compression} update holds {value.dtype}")
    delta = value.astype(np.float32)
    if compression == "int8":
        if scale is None:
            raise ValueError("an int8 update without its scales")
        delta = delta * _broadcast(np.asarray(scale, np.float32), value.ndim)
    if delta.shape != sent.shape:
        raise ValueError(f"a change of shape {list(delta.shape)} for an array of shape {list(sent.shape)}")
    return np.asarray(sent.astype(np.float32) + delta).astype(sent.dtype)


def encode_update(sent: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray],
                  trained_rows: Mapping[str, np.ndarray], compression: str, unsent: Collection[str] = ()
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(dense arrays, table rows, int8 scales) of one update. Tables named in `trained_rows` (table ->
    the row ids it sends, sorted) travel as those rows only, `unsent` arrays (ones this node's training
    never changes) not at all; a scale is keyed like its array."""
    dense, rows, scales = {}, {}, {}
    for name, value in trained.items():
        if name in unsent:
            continue
        if name in trained_rows:
            ids = trained_rows[name]
            rows[name], scale = encode_array(value[ids], sent[name][ids], compression)
        else:
            dense[name], scale = encode_array(value, sent[name], compression)
        if scale is not None:
            scales[name] = scale
    return dense, rows, scales


def decode_update(current: Mapping[str, np.ndarray], dense: Mapping[str, np.ndarray],
                  rows: Mapping[str, np.ndarray], row_ids: Mapping[str, np.ndarray],
                  scales: Mapping[str, np.ndarray], compression: str
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(dense arrays, table row values) as trained, against the global model `current` the node was
    sent. Raises ValueError (or KeyError) when the update cannot be read; its arrays are checked later."""
    arrays = {name: decode_array(value, scales.get(name), current[name], compression)
              if name in current else value for name, value in dense.items()}
    values = {}
    for name, value in rows.items():
        if name not in current or name not in row_ids:
            raise ValueError(f"rows of {name!r} without their row ids")
        ids = np.asarray(row_ids[name], np.int64)
        if len(ids) != len(value):
            raise ValueError(f"{len(value)} rows of {name!r} for {len(ids)} row ids")
        if len(ids) and (ids.min() < 0 or ids.max() >= len(current[name])):
            raise ValueError(f"rows of {name!r} outside its {len(current[name])} rows")
        values[name] = decode_array(value, scales.get(name), current[name][ids], compression)
    return arrays, values
