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
