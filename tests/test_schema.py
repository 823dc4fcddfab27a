import math

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from data.features import FeatureColumns
from data.loading import read_table
from data.schema import validate_interactions


def table(**overrides):
    base = {"merchant_id": ["a", "a", "b"], "user_id": [1, 2, 3], "item_id": ["x", "y", "z"],
            "purchase": [0, 1, None], "click": [1, 1, 0]}
    base.update(overrides)
    return pd.DataFrame(base)


def test_valid_table_is_normalised():
    out = validate_interactions(table(rating=[5.0, None, 3.0]), "t.csv")
    assert out["user_id"].tolist() == ["1", "2", "3"]
    assert math.isnan(out["purchase"][2]) and out["purchase"][1] == 1.0
    assert math.isnan(out["rating"][1]) and out["rating"][0] == 5.0


@pytest.mark.parametrize("frame, message", [
    (table().drop(columns="user_id"), "t.csv: missing required column 'user_id'"),
    (table().drop(columns=["purchase", "click"]), "t.csv: no label column"),
    (table(purchase=[0, 2, 1]), "column 'purchase' must be 0 or 1 (or empty); found 2 at row 2"),
    (table(click=[1, -1, 0]), "column 'click' must be 0 or 1"),
    (table(rating=[1.0, np.inf, 2.0]), "column 'rating' must be a finite number (or empty); found inf at row 2"),
    (table(rating=["1", "good", "2"]), "column 'rating' has 1 non-numeric value(s), first 'good' at row 2"),
    (table(item_id=["x", None, "z"]), "column 'item_id' has 1 empty cell(s), first at row 2"),
    (table(merchant_id=["a", " ", "b"]), "column 'merchant_id' has 1 empty cell(s), first at row 2"),
    (table().iloc[:0], "t.csv: the table has no rows"),
])
def test_bad_tables_name_file_column_and_value(frame, message):
    with pytest.raises(InputError) as err:
        validate_interactions(frame, "t.csv")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_feature_columns_named_in_config_must_exist():
    with pytest.raises(InputError, match="missing feature column 'brand'"):
        validate_interactions(table(), "t.csv", features=["merchant_id", "user_id", "item_id", "brand"])
    with pytest.raises(InputError, match="missing feature column 'region'"):
        validate_interactions(table(), "t.csv", features=FeatureColumns(("user_id", "item_id"), bias_only=("region",)))


def test_read_table_csv_and_parquet_agree(tmp_path):
    frame = table(rating=[4.0, None, 2.0])
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    a = validate_interactions(read_table(tmp_path / "t.csv"), "csv")
    b = validate_interactions(read_table(tmp_path / "t.parquet"), "parquet")
    pd.testing.assert_frame_equal(a, b)


def test_read_table_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(InputError, match="unsupported file type '.json'"):
        read_table(tmp_path / "t.json")
