"""`merchant-fl-convert FORMAT IN [IN ...] OUT [options]`: a public data set's files into the
interactions table (CSV or Parquet by OUT's suffix), ready for data=table data.path=OUT.

    merchant-fl-convert movielens ml-1m/ratings.dat ml1m.parquet --movies ml-1m/movies.dat
    merchant-fl-convert amazon Electronics_5.json.gz Books_5.json.gz amazon.parquet
    merchant-fl-convert taobao UserBehavior.csv taobao.parquet
    merchant-fl-convert aliccp sample_skeleton_train.csv aliccp.parquet --common common_features_train.csv
    merchant-fl-convert aliexpress AliExpress_NL/train.csv AliExpress_ES/train.csv aliexpress.parquet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from core.errors import InputError
from data.adapters import FORMATS
from data.adapters.files import write_table


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="merchant-fl-convert", description=__doc__.splitlines()[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    formats = top.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, module in FORMATS.items():
        sub = formats.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("files", nargs="+", metavar="IN ... OUT", help="input file(s), then the output table")
        module.add_arguments(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args, rest = top.parse_known_args(argv)  # files may come after the options too
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        top.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.files += rest
    if len(args.files) < 2:
        print(f"merchant-fl: error: {args.format}: give at least one input file and the output table", file=sys.stderr)
        return 2
    *inputs, out = (Path(p) for p in args.files)
    try:
        table = FORMATS[args.format].convert(inputs, args)
        written, rows, merchants = write_table([table] if isinstance(table, pd.DataFrame) else table, out)
    except InputError as exc:
        print(f"merchant-fl: error: {exc}", file=sys.stderr)
        return 2
    print(f"{written}: {rows:,} rows, {merchants:,} merchants (python -m data.stats data=table data.path={written} "
          "describes it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
