"""The speed benchmark's measurements on a tiny platform: they run, and their figures add up."""

from __future__ import annotations

import json
import logging
import math

import pytest

from benchmarks.speed import aggregation_cost, model_figures
from tasks.experiment import open_experiment
from tests.conftest import TINY


def test_aggregation_is_timed_over_one_update_per_merchant(tiny_cfg):
    cost = aggregation_cost(tiny_cfg())
    assert cost["updates"] == 4
    assert cost["train_s"] > 0 and cost["aggregate_s"] > 0


def test_model_figures_count_what_a_client_sends(tiny_cfg):
    cfg = tiny_cfg("model=mmoe")
    open_experiment(cfg)  # prepares every merchant's data, as the benchmark's parent process would
    figures = model_figures(TINY, "mmoe")
    model = open_experiment(cfg).new_model()
    parameters = sum(p.numel() for p in model.parameters())
    assert figures["parameters"] == parameters
    assert figures["update_mb"] >= parameters * 4 / 2**20  # float32 weights, plus buffers and weighting state
    assert figures["train_rows_s"] > 0 and figures["predict_rows_s"] > 0 and figures["peak_rss_mb"] > 0


def test_quality_report_shows_the_references_and_the_verdict(tiny_cfg):
    from benchmarks.quality import held_out_labels, report
    from benchmarks.references import NAMES, gather_splits, run_references, tuning_note
    from server_app.outputs import RunResult

    splits, tasks, features = gather_splits(tiny_cfg("data.val_fraction=0.2"))
    references = run_references(splits, tasks, features)
    assert list(references) == list(NAMES)
    names = [t.name for t in tasks]
    for ref in references.values():
        assert set(ref.final) == set(names) and set(ref.per_merchant) == set(splits)
    merchants = list(splits)

    def fake(mode: str, auc: float, rmse: float) -> RunResult:
        final = {t: ({"rmse": rmse, "mae": rmse * 0.8} if t == "rating" else {"auc": auc, "logloss": 0.01})
                 for t in names}
        return RunResult(mode, names, [], final, {m: final for m in merchants}, 2, {}, {})
    results = {"centralized": fake("centralized", 0.9, 0.5), "federated": fake("federated", 0.99, 0.1),
               "local": fake("local", 0.4, 3.0)}
    counts = held_out_labels(splits, tasks)
    seeds = [results["federated"].final, results["federated"].final]
    text = report(results, merchants[:2], {m: 1.0 for m in results}, "make bench", references,
                  tuning_note(splits), seeds, counts)
    for name in NAMES:
        assert f"| {name} (reference) |" in text
    assert "settings chosen on the validation split" in text
    assert "| chosen settings |" in text
    for t in names:
        metric = "rmse" if t == "rating" else "auc"
        assert f"- {t} {metric}: best is federated (" in text and "; best reference: " in text
    verdict = text.split("| task | federated | per seed | best reference | margin | paired error | test-split error |")[1].split("\n\n")[0]
    assert verdict.count("| yes |") == len(names) and "NO" not in verdict
    for t in names:
        row = next(line for line in verdict.splitlines() if line.startswith(f"| {t} "))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        metric = "rmse" if t == "rating" else "auc"
        best = min if metric == "rmse" else max
        best_ref = best(r.final[t][metric] for r in references.values())
        assert cells[2] == f"{cells[1]}, {cells[1]}"  # each seed's value
        margin = (0.99 - best_ref) if metric == "auc" else (best_ref - 0.1)
        assert float(cells[4]) == pytest.approx(margin, abs=1e-4) and float(cells[4]) > 0
        # the sampling error from the merchants' test labels and the federated model's per-merchant values
        n = {m: c[t][0] for m, c in counts.items()}
        if metric == "rmse":
            expected = math.sqrt(sum((k * 0.1 / math.sqrt(2 * k)) ** 2 for k in n.values() if k)) / sum(n.values())
            assert float(cells[6]) == pytest.approx(expected, abs=1e-4)
        else:
            assert 0 < float(cells[6]) < 0.1
        assert cells[5] == "-"  # no predictions given: no paired error

    worse = {**results, "federated": fake("federated", 0.3, 9.0)}
    verdict = report(worse, merchants[:2], {m: 1.0 for m in results}, "make bench", references
                     ).split("| task | federated | per seed | best reference | margin | paired error | test-split error |")[1].split("\n\n")[0]
    assert verdict.count("| NO |") == len(names)
    for line in verdict.splitlines()[2:]:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert float(cells[4]) < 0  # behind: a negative margin
        assert cells[2] == cells[5] == cells[6] == "-"  # no seeds, no predictions, no counts


def test_the_paired_error_compares_a_real_runs_kept_model_with_a_reference_on_the_same_rows(tiny_cfg, tiny_runs):
    """run_predictions scores the test splits with the run's saved model: the same metrics the run
    reported; the margin's paired error is 0 against itself and, against a reference, below one
    model's own test-split error."""
    import numpy as np

    from benchmarks.quality import held_out_labels, is_tie, paired_error, run_predictions, sampling_error
    from benchmarks.references import gather_splits, run_references
    from server_app.outputs import read_metrics_document
    from tasks.metrics import combine_merchants
    from tasks.training import score

    splits, tasks, features = gather_splits(tiny_cfg("data.val_fraction=0.2", "ranking.enabled=false"))
    for mode in ("centralized", "local"):
        stored = read_metrics_document(tiny_runs[mode] / "metrics.json")
        predictions = run_predictions(tiny_runs[mode], splits)
        rescored = {m: score(predictions[m], splits[m].test, tasks) for m in splits}
        final = combine_merchants({m: r[0] for m, r in rescored.items()}, {m: r[1] for m, r in rescored.items()})
        for t in tasks:
            for metric, value in final[t.name].items():
                assert value == pytest.approx(stored.final[t.name][metric], abs=1e-4), (mode, t.name, metric)
    bias = run_references(splits, tasks, features, names=["bias model"])["bias model"]
    counts = held_out_labels(splits, tasks)
    for t in tasks:
        metric = t.metric_names[0]
        assert paired_error(t.name, metric, predictions, predictions, splits) == 0.0
        error = paired_error(t.name, metric, predictions, bias.predictions, splits)
        assert np.isfinite(error) and 0 < error < sampling_error(t.name, metric, stored.per_merchant, counts)
        assert is_tie(-1.5 * error, error) and not is_tie(2.5 * error, error) and not is_tie(0.0, None)


def test_scoring_bench_scores_every_row_in_each_format(tiny_runs, tmp_path):
    from benchmarks.scoring import scoring_cost, scoring_table

    results = scoring_cost(TINY, tmp_path, rows=3000, run_dir=tiny_runs["centralized"])
    assert [(r["format"], r["threads"]) for r in results] == [("csv", 1), ("csv", 2), ("parquet", 1), ("parquet", 2)]
    assert all(r["rows"] == 3000 and r["wall_s"] > 0 for r in results)
    assert scoring_table(results).count("| 3,000 |") == 4


def test_per_merchant_section_sets_the_modes_side_by_side(tmp_path):
    from benchmarks.quality import per_merchant_section
    from server_app.merchant_view import plot_merchants
    from server_app.outputs import RunResult

    rows = {"big": 900, "small": 40, "mid": 300}

    def run(mode: str, auc: dict[str, float]) -> RunResult:
        per_merchant = {m: {"click": {"auc": a, "logloss": 0.3}} for m, a in auc.items()}
        return RunResult(mode, ["click"], [], {}, per_merchant, 1, {}, {}, merchant_rows=rows)
    results = {"centralized": run("centralized", {"big": 0.8, "small": 0.7, "mid": 0.75}),
               "federated": run("federated", {"big": 0.79, "small": 0.72, "mid": 0.74}),
               "local": run("local", {"big": 0.78, "small": 0.55, "mid": 0.76})}
    text = per_merchant_section(results)
    assert "| merchant | train rows | click auc centralized | click auc federated | click auc local |" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "train rows" not in line]
    assert [line.split(" | ")[0] for line in table] == ["| small", "| mid", "| big"]
    assert "| small | 40 | 0.7000 | 0.7200 | 0.5500 |" in text
    assert "Federated better than the merchant alone (local) on: click auc: 2/3." in text
    plot_merchants(results, tmp_path / "merchants.png", {"click": ("auc", "logloss")})
    assert (tmp_path / "merchants.png").stat().st_size > 10_000


def test_update_bytes_measures_each_wire_format_through_the_real_client_and_server_code(tiny_cfg):
    from benchmarks.update_bytes import measure
    figures = measure(tiny_cfg(), merchants=2)
    sizes, deviation = figures["sizes"], figures["deviation"]
    assert figures["merchants"] == 2 and figures["round"] == 2
    # sparse: the same aggregate, bit for bit, from a fraction of the bytes (16384-row tables, 400 users)
    assert deviation["sparse, float32"] == 0.0 and sizes["whole, float32"] > 10 * sizes["sparse, float32"]
    assert sizes["sparse, float32"] > sizes["sparse, float16"] > sizes["sparse, int8"]
    assert 0 < deviation["sparse, float16"] < deviation["sparse, int8"] < 0.01
    assert figures["download"] >= figures["model_mb"] * 2**20  # the whole model goes down


def test_the_loop_comparison_times_every_loop_on_the_same_rows(tiny_cfg):
    from benchmarks.loop import loop_cost
    from benchmarks.speed import loop_section

    figures = loop_cost(open_experiment(tiny_cfg()), repeats=1)
    assert set(figures["client"]) == {"rows", "bare", "bare_l2", "round", "epochs"}
    assert set(figures["centralized"]) == {"rows", "bare", "bare_l2", "round"}
    assert figures["centralized"]["rows"] > figures["client"]["rows"] > 0
    assert all(v > 0 for part in ("client", "centralized") for v in figures[part].values())
    text = "\n".join(loop_section(figures))
    assert "| train_round, as a client runs it |" in text and "| 1.00 |" in text


def test_data_cost_times_each_step_from_an_empty_cache(tmp_path):
    from benchmarks.scale import data_cost
    from benchmarks.speed import data_section

    figures = data_cost(tmp_path / "data", rows=4000, repeats=1)
    assert figures["rows"] == 4000 and figures["merchants"] == 20 and figures["loaded_rows"] == 4000
    assert all(figures[k] > 0 for k in ("generate_s", "partition_s", "prepare_s", "load_s"))
    assert "| prepare every merchant (validate, hash, split, cache) |" in "\n".join(data_section(figures))


def test_the_client_clock_and_the_tree_memory_sampler(tmp_path):
    import subprocess
    import sys
    import time

    from benchmarks.client_clock import client_seconds, clock_mod, first_start
    from benchmarks.memory import TreeMemory, descendants

    class Metadata:
        message_type = "train"

    class Msg:
        metadata = Metadata()

    mod = clock_mod(tmp_path / "clock.tsv")
    assert mod(Msg(), None, lambda msg, context: "reply") == "reply"
    mod(Msg(), None, lambda msg, context: time.sleep(0.01))
    seconds = client_seconds(tmp_path / "clock.tsv")
    assert seconds["messages"] == 2 and seconds["train"] >= 0.01 and first_start(tmp_path / "clock.tsv") > 0
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    try:
        with TreeMemory(every_s=0.05) as memory:
            time.sleep(0.2)
            assert child.pid in descendants(memory.root)
        assert memory.peak_processes >= 2 and memory.peak_rss_mb >= memory.peak_pss_mb > 0
    finally:
        child.kill()
        child.wait()


def test_the_scale_table_reads_its_figures():
    from benchmarks.speed import scale_section

    figures = {"rows": 2_000_000, "partition_s": 20.0, "ray_start_s": 12.0, "prepared": 395, "setup_s": 30.0,
               "train_s": 20.0, "evaluate_s": 20.0, "federated_s": 60.0, "overhead": 1.5, "overhead_all": 60 / 70,
               "overhead_per_actor": 2 * 60 / 70, "ray_stop_s": 2.0, "wall_s": 100.0, "peak_pss_mb": 2900.0,
               "peak_rss_mb": 3900.0, "load": 2.5, "actors": 2}
    text = "\n".join(scale_section({10_000: figures}))
    assert "| 10,000 | 2,000,000 | 20.0 | 12.0 | 395 | 30.0 / 20.0 / 20.0 | 60.0 | 1.50 | 0.86 | 1.71 | 2.0 | 100 |" \
        " 2,900 (3,900) | 2.5 |" in text and "2 Ray actors" in text


def test_the_quality_report_is_rebuilt_from_stored_runs(tiny_runs, tmp_path, capsys):
    """--from-runs trains nothing: it reads each mode's seed-N/metrics.json (here the stored tiny runs)."""
    import shutil

    from benchmarks.quality import main
    from server_app.outputs import read_metrics_document

    stored = read_metrics_document(tiny_runs["centralized"] / "metrics.json")
    doc = json.loads((tiny_runs["centralized"] / "metrics.json").read_text())
    assert (stored.mode, stored.tasks, stored.final, stored.selected_round) == (
        "centralized", doc["task_list"], doc["tasks"], doc["selected_round"])
    for mode, source in (("centralized", "centralized"), ("federated", "centralized"), ("local", "local")):
        (tmp_path / mode / "seed-0").mkdir(parents=True)
        shutil.copy(tiny_runs[source] / "metrics.json", tmp_path / mode / "seed-0")
    overrides = [*TINY, "data.val_fraction=0.2"]
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    try:  # main quiets Flower's logger for the process; later tests read its INFO lines
        assert main(["--from-runs", "--seeds", "1", "--out", str(tmp_path), "--no-references", *overrides]) == 0
        report = (tmp_path / "report.md").read_text()
        assert report.startswith(f"Command: `python -m benchmarks.quality --seeds 1 --out {tmp_path} --no-references "
                                 "--from-runs ")
        row = next(line for line in report.splitlines() if line.startswith("| federated |"))
        assert f"| {stored.final['click']['auc']:.4f} |" in row and row.endswith(f"| {stored.selected_round} | - |")
        assert not (tmp_path / "federated" / "seed-0" / "model.pt").exists()  # nothing trained
        capsys.readouterr()
        assert main(["--from-runs", "--seeds", "2", "--out", str(tmp_path), "--no-references", *overrides]) == 2
    finally:
        flwr_logger.setLevel(level)
    assert capsys.readouterr().err.strip().splitlines() == [
        f"bench: error: --from-runs: {tmp_path / 'centralized' / 'seed-1' / 'metrics.json'} does not exist (run the "
        "bench with the same --out, --seeds and overrides first)"]


def test_the_quality_bench_keeps_the_best_round_of_20_unless_told_otherwise():
    from benchmarks.quality import with_protocol
    from core.config import compose_config
    default = compose_config(with_protocol([]))
    assert (default.federation.rounds, default.data.val_fraction, default.select_round) == (20, 0.1, "auto")
    told = compose_config(with_protocol(["data=synthetic_sparse", "federation.rounds=7", "data.val_fraction=0"]))
    assert (told.federation.rounds, told.data.val_fraction, told.data.synthetic.n_rows) == (7, 0.0, 60000)
