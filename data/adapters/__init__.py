"""Public data sets into the interactions table (data/schema.py), one module per format.

Each module has `add_arguments(parser)` (its options) and `convert(inputs, args)` returning the
table with the schema's column names: one DataFrame, or an iterator of chunks when the format
converts row by row (then the table is never in memory whole); launch/convert.py is the command.
Nothing here downloads: the user fetches the files (README, Data, "Public data sets").
"""

from __future__ import annotations

from data.adapters import aliccp, aliexpress, amazon, movielens, taobao

FORMATS = {"movielens": movielens, "amazon": amazon, "taobao": taobao, "aliccp": aliccp, "aliexpress": aliexpress}
