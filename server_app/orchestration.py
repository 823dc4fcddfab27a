"""One job from config to outputs, for every mode: the ServerApp's main and the Hydra door both call it.

Federated, the server touches no data file: everything it knows comes from the nodes. The baselines
(mode=centralized|local) run in this process over every merchant's prepared data, as references.
"""

from __future__ import annotations

from logging import INFO, WARNING
from pathlib import Path
from typing import Any, Mapping

from flwr.common.logger import log
from flwr.serverapp import Grid

from core.errors import InputError
from core.privacy import PrivacySettings
from core.runtime import resolve_device, seed_everything
from data.schema import format_bad_rows
from data.splits import split_fractions
from data.synthetic import platform_spec
from server_app.baselines import run_baseline
from server_app.federated import run_federated
from server_app.outputs import RunResult, write_outputs
from server_app.progress import RunProgress
from server_app.setup import Directory
from tasks.experiment import check_auto_settings
from tasks.wide import refit_steps
from tasks.registry import TASKS
from tasks.selection import check_rule, prior_note

MODES = ("federated", "centralized", "local")


def run_job(cfg: Mapping[str, Any], output_dir: Path, grid: Grid | None = None,
            directory: Directory | None = None) -> RunResult:
    """One job; federated, `grid` is Flower's and `directory` (optional) names the nodes' merchants
    without a message (a simulation's launcher knows them: launch/simulation.py)."""
    mode = cfg["mode"]
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    seed_everything(int(cfg["seed"]))
    resolve_device(str(cfg["device"]))  # a bad device setting fails here, before any training
    PrivacySettings.from_config(cfg)  # an unsupported privacy combination fails before any data is read
    split_fractions(cfg["data"])  # the nodes split their own rows; a bad fraction fails here, once
    if cfg["data"]["source"] == "synthetic":
        platform_spec(cfg["data"]["synthetic"])
    check_rule(str(cfg["select_round"]))  # whether there are validation rows is known once data is prepared
    check_auto_settings(cfg["train"])  # resolved once the data's tasks are known; a typo fails here
    refit_steps(cfg.get("refit_biases", False))
    refit_steps(cfg.get("refit_embeddings", False), "refit_embeddings")
    if int(cfg["patience"]) < 0:
        raise InputError(f"patience must be >= 0 (0 = never stop early), got {cfg['patience']}")
    if mode != "federated" and (cfg.get("resume") or cfg.get("init_from")):
        raise InputError(f"resume and init_from apply to mode=federated, not mode={mode}")
    if cfg.get("resume") and cfg.get("init_from"):
        raise InputError("give resume (continue a run) or init_from (a new run from a trained model), not both")
    if mode == "federated" and grid is None:
        raise RuntimeError("mode=federated needs a Flower grid; run it through a ServerApp")
    with RunProgress.for_run(cfg, output_dir) as progress:
        result = run_federated(grid, cfg, progress, output_dir, directory) if mode == "federated" else run_baseline(cfg, progress)
    if result.prior_heads and mode == "local":  # each merchant's own validation rows decided for its model
        log(INFO, "heads that predict their prior in a merchant's kept model (its validation loss there was no "
            "better): %s", "; ".join(f"{m}: {', '.join(heads)}" for m, heads in result.prior_heads.items()))
    elif result.prior_heads:
        log(WARNING, prior_note(result.prior_heads, int(result.selected_round)))
    if result.calibration and mode == "local":
        log(INFO, "recalibrated on each merchant's validation rows (head output z -> a z + b): %d of %d merchants",
            len(result.calibration), len(result.merchant_rows) or len(result.calibration))
    elif result.calibration:
        log(INFO, "recalibrated on the validation rows (head output z -> a z + b, calibrate=true): %s",
            ", ".join(f"{t} a={a:.3f} b={b:+.3f}" for t, (a, b) in result.calibration.items()))
    if result.refit_steps:
        log(INFO, "refit_biases: the kept model's per-id biases took %d Newton step(s) on the train and validation "
            "rows together", result.refit_steps)
    if result.embedding_refit_steps:
        log(INFO, "refit_embeddings: then its embedding rows took %d Newton step(s) on the same rows",
            result.embedding_refit_steps)
    if result.bad_rows:  # every node counted its own; the one line a user sees (and metrics.json bad_rows)
        log(WARNING, "data, all merchants: %s (data.on_bad_rows=skip)", format_bad_rows(result.bad_rows))
    write_outputs(result, output_dir, {t: TASKS[t].metric_names for t in result.tasks})
    return result
