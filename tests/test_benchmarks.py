"""The speed benchmark's measurements on a tiny platform: they run, and their figures add up."""

from __future__ import annotations

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
    from benchmarks.quality import report
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
    text = report(results, merchants[:2], {m: 1.0 for m in results}, "make bench", references,
                  tuning_note(splits))
    for name in NAMES:
        assert f"| {name} (reference) |" in text
    assert "settings chosen on the validation split" in text
    assert "| chosen settings |" in text
    for t in names:
        metric = "rmse" if t == "rating" else "auc"
        assert f"- {t} {metric}: best is federated (" in text and "; best reference: " in text
    verdict = text.split("| task | federated | best reference |")[1].split("\n\n")[0]
    assert verdict.count("| yes |") == len(names) and "NO" not in verdict

    worse = {**results, "federated": fake("federated", 0.3, 9.0)}
    verdict = report(worse, merchants[:2], {m: 1.0 for m in results}, "make bench", references
                     ).split("| task | federated | best reference |")[1].split("\n\n")[0]
    assert verdict.count("| NO |") == len(names)
