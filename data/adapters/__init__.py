"""Public data sets into the interactions table (data/schema.py), one module per format.

Each module has `add_arguments(parser)` (its options) and `convert(inputs, args) -> DataFrame`
returning the table with the schema's column names; launch/convert.py is the command around them.
Nothing here downloads: the user fetches the files (README, Data, "Public data sets").
"""

from __future__ import annotations

from data.adapters import aliccp, aliexpress, amazon, movielens, taobao

FORMATS = {"movielens": movielens, "amazon": amazon, "taobao": taobao, "aliccp": aliccp, "aliexpress": aliexpress}
