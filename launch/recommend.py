"""`merchant-fl-recommend RUN_DIR --merchant M --user U --k 10`: the top-K items of the merchant's
catalogue for the user, with every task's prediction, as a table or JSON.

The catalogue and the user's items come from the merchant's interactions: `--data PATH` (the
merchant's own file, or any table holding its rows), else the run's own data as its config names it.
"""

from __future__ import annotations

import argparse
import json
import sys

from launch.commands import run_command
from serving import load

PROG = "merchant-fl-recommend"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's output directory (holds model.pt)")
    parser.add_argument("--merchant", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    parser.add_argument("--data", metavar="PATH", help="the merchant's interactions (default: the run's own data)")
    parser.add_argument("--include-seen", action="store_true", help="keep items the user already touched")
    parser.add_argument("--by", metavar="TASK", help="the task that orders the items (default: the run's ranking head)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    def body() -> None:
        model = load(args.run_dir)
        top = model.recommend(args.merchant, args.user, args.k, args.include_seen, args.data, args.by)
        if args.json:
            print(json.dumps({"run_dir": str(args.run_dir), "merchant": args.merchant, "user": args.user,
                              "ranked_by": top.attrs["ranked_by"], "include_seen": args.include_seen,
                              "items": top.to_dict(orient="records")}, indent=1))
            return
        seen = "seen items included" if args.include_seen else "seen items left out"
        print(f"top {len(top)} items of merchant {args.merchant} for user {args.user} "
              f"(ranked by {top.attrs['ranked_by']}; {seen})")
        print(top.to_string(index=False, float_format=lambda v: f"{v:.4f}") if len(top) else "(no item left to recommend)")

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
