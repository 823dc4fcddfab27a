"""merchant-fl-score and merchant-fl-recommend on a tiny real run: what they write, and bad input as
one line `merchant-fl-...: error: ...`, exit code 2, no traceback and no output file."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings
from functools import partial

import pandas as pd
import pytest

from serving import load
from tests.conftest import ROOT, cli_env, merchant_files


def absolute(args, cwd) -> list[str]:
    """Relative file names given are made absolute (in `cwd`)."""
    return [str(cwd / a) if str(a).endswith((".csv", ".txt")) and "/" not in str(a) else str(a) for a in args]


def command(module: str, *args, cwd) -> subprocess.CompletedProcess:
    """Run from the repository root (this checkout's code)."""
    return subprocess.run([sys.executable, "-m", module, *absolute(args, cwd)], cwd=ROOT, capture_output=True,
                          text=True, env=cli_env(), timeout=300)


def command_in_process(module: str, *args, cwd, capsys) -> subprocess.CompletedProcess:
    """The command's main() in this process: its return code (the process's exit code), stdout and stderr,
    where stderr also gets each Python warning the command's process would have printed (every category
    but the ones Python ignores by default)."""
    main = importlib.import_module(module).main
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(absolute(args, cwd))
    out = capsys.readouterr()
    quiet = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    shown = "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught
                    if not issubclass(w.category, quiet))
    return subprocess.CompletedProcess([module, *args], code, out.out, out.err + shown)


@pytest.fixture
def user(tiny_runs) -> str:
    """A user of merchant m01 in the runs' data."""
    return str(merchant_files(tiny_runs["centralized"])["m01"]["user_id"].iloc[0])


def traffic(n: int = 500) -> pd.DataFrame:
    return pd.DataFrame({"merchant_id": [f"m0{k % 4}" for k in range(n)], "user_id": [f"u{k % 37:05d}" for k in range(n)],
                         "item_id": [f"i{k % 53:05d}" for k in range(n)], "note": [f"row {k}" for k in range(n)]})


@pytest.mark.parametrize("out_name", ["scored.parquet", "scored.csv"])
def test_score_writes_every_row_with_one_column_per_task_in_batches(tiny_runs, tmp_path, out_name):
    source, target = tmp_path / "in.csv", tmp_path / out_name
    rows = traffic()
    rows.to_csv(source, index=False)
    run = command("launch.score", tiny_runs["local"], source, target, "--batch-rows", 64, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("scored 500 rows into ")
    scored = pd.read_parquet(target) if target.suffix == ".parquet" else pd.read_csv(target, dtype={"note": str})
    expected = load(tiny_runs["local"]).score(rows)
    assert list(scored.columns) == [*rows.columns, *expected.columns]
    assert scored[list(rows.columns)].astype(str).equals(rows.astype(str))
    pd.testing.assert_frame_equal(scored[list(expected.columns)], expected, check_dtype=False, rtol=1e-6)
    assert not list(tmp_path.glob("*.partial"))


def test_recommend_prints_a_table_or_json(tiny_runs, tmp_path, user):
    model = load(tiny_runs["centralized"])
    expected = model.recommend("m01", user, k=3)
    run = command("launch.recommend", tiny_runs["centralized"], "--merchant", "m01", "--user", user, "--k", 3,
                  "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["ranked_by"] == "predicted_rating" and doc["include_seen"] is False
    assert [item["item_id"] for item in doc["items"]] == expected["item_id"].tolist()
    assert set(doc["items"][0]) == {"rank", "item_id", "predicted_rating", "purchase_probability", "click_probability"}
    table = command("launch.recommend", tiny_runs["centralized"], "--merchant", "m01", "--user", user, "--k", 3,
                    cwd=tmp_path)
    lines = table.stdout.splitlines()
    assert lines[0] == f"top 3 items of merchant m01 for user {user} (ranked by predicted_rating; seen items left out)"
    assert lines[1].split() == ["rank", "item_id", "predicted_rating", "purchase_probability", "click_probability"]
    assert [line.split()[1] for line in lines[2:]] == expected["item_id"].tolist()


def bad_tables(tmp_path):
    traffic().drop(columns="user_id").to_csv(tmp_path / "no_user.csv", index=False)
    rows = traffic(300)
    rows.loc[249, "item_id"] = ""
    rows.to_csv(tmp_path / "empty_item.csv", index=False)
    traffic().assign(merchant_id="m77").to_csv(tmp_path / "other_merchant.csv", index=False)
    traffic().to_csv(tmp_path / "good.csv", index=False)


SCORE_BAD_INPUT = [
    ("{tmp}/nowhere", ["good.csv"], "{tmp}/nowhere: no such run directory"),
    ("{tmp}", ["good.csv"], "{tmp}: no model.pt (a run writes it when it finishes"),
    ("local", ["missing.csv"], "{tmp}/missing.csv: no such file"),
    ("local", ["no_user.csv"], "{tmp}/no_user.csv: missing column 'user_id' (columns found: merchant_id, item_id, note)"),
    ("local", ["empty_item.csv", "--batch-rows", "64"],
     "{tmp}/empty_item.csv: column 'item_id' has 1 empty cell(s), first at row 250"),
    ("local", ["other_merchant.csv"], "unknown merchant 'm77': this mode=local run has one model per merchant"),
    ("local", ["good.txt"], "{tmp}/good.txt: unsupported file type '.txt'"),
]


def score_bad_input(tiny_runs, tmp_path, run, args, expected, runner):
    bad_tables(tmp_path)
    (tmp_path / "good.txt").write_text("x")
    run_dir = tiny_runs.get(run, run.format(tmp=tmp_path))
    out = tmp_path / "scored.parquet"
    result = runner("launch.score", run_dir, args[0], out, *args[1:], cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"merchant-fl-score: error: {expected.format(tmp=tmp_path)}")
    assert not out.exists() and not list(tmp_path.glob("*.partial")) and result.stdout == ""


# Every bad input through the command's main() in this process (exit code = its return value); the
# command's own process for the first (and for every good input above).
@pytest.mark.parametrize("run, args, expected", SCORE_BAD_INPUT)
def test_score_bad_input_is_one_line_and_writes_nothing(tiny_runs, tmp_path, capsys, run, args, expected):
    score_bad_input(tiny_runs, tmp_path, run, args, expected, partial(command_in_process, capsys=capsys))


def test_the_score_process_prints_bad_input_as_one_line_and_exits_2(tiny_runs, tmp_path):
    score_bad_input(tiny_runs, tmp_path, *SCORE_BAD_INPUT[0], runner=command)


RECOMMEND_BAD_INPUT = [
    ("{tmp}/nowhere", ["--merchant", "m01", "--user", "USER"], "{tmp}/nowhere: no such run directory"),
    ("centralized", ["--merchant", "m77", "--user", "USER"],
     "unknown merchant 'm77': the run's synthetic data has 4 merchants (m00, m01, m02, m03)"),
    ("local", ["--merchant", "m77", "--user", "USER"], "unknown merchant 'm77': this mode=local run has one model"),
    ("centralized", ["--merchant", "m01", "--user", "nobody"],
     "unknown user 'nobody': the run's synthetic data has no row of this user with merchant 'm01'"),
    ("centralized", ["--merchant", "m01", "--user", "USER", "--data", "no_user.csv"],
     "{tmp}/no_user.csv: missing column 'user_id'"),
    ("centralized", ["--merchant", "m01", "--user", "USER", "--k", "0"], "k must be at least 1, got 0"),
    ("centralized", ["--merchant", "m01", "--user", "USER", "--by", "clicks"],
     "ranking.task=clicks is not a task of this run"),
]


def recommend_bad_input(tiny_runs, tmp_path, user, run, args, expected, runner):
    bad_tables(tmp_path)
    args = [user if a == "USER" else a for a in args]
    result = runner("launch.recommend", tiny_runs.get(run, run.format(tmp=tmp_path)), *args, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"merchant-fl-recommend: error: {expected.format(tmp=tmp_path)}")


@pytest.mark.parametrize("run, args, expected", RECOMMEND_BAD_INPUT)
def test_recommend_bad_input_is_one_line(tiny_runs, tmp_path, user, capsys, run, args, expected):
    recommend_bad_input(tiny_runs, tmp_path, user, run, args, expected, partial(command_in_process, capsys=capsys))


def test_the_recommend_process_prints_bad_input_as_one_line_and_exits_2(tiny_runs, tmp_path, user):
    recommend_bad_input(tiny_runs, tmp_path, user, *RECOMMEND_BAD_INPUT[0], runner=command)
