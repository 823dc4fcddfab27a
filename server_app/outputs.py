"""What every run leaves behind, whatever the mode or door: metrics.json, metrics.png, model.pt,
and a readable per-round table in the log."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.common.logger import log

from server_app.figures import metric_panels
from server_app.merchant_view import plot_merchants
from tasks.metrics import Metrics


@dataclass
class RoundRecord:
    round: int
    tasks: dict[str, Metrics]                              # test metrics, merchants combined
    train_loss: dict[str, float] = field(default_factory=dict)
    validation: dict[str, Metrics] = field(default_factory=dict)
    privacy: dict[str, float] = field(default_factory=dict)  # (epsilon, delta) spent so far; empty without DP
    # task -> column -> the prior, in rows, its per-id biases took at this round's Newton step
    # (train.bias_l2; estimated under auto); local: merchant -> that. Empty without a step.
    bias_priors: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    mode: str
    tasks: list[str]
    rounds: list[RoundRecord]
    final: dict[str, Metrics]                               # test metrics of the kept model, merchants combined
    per_merchant: dict[str, dict[str, Metrics]]            # the same, per merchant
    selected_round: int | dict[str, int]                    # the kept round (local: per merchant)
    model_state: dict[str, Any]                             # a state_dict, or merchant -> state_dict (local)
    config: dict[str, Any]
    oracle: dict[str, Metrics] | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, Any] | None = None                      # the run plan (tasks, label stats): rebuilds the model
    merchant_rows: dict[str, int] = field(default_factory=dict)  # merchant -> train rows (from its summary)
    bad_rows: dict[str, int] = field(default_factory=dict)  # reason -> rows the nodes left out (on_bad_rows=skip)
    # task -> its validation loss over its prior's at the kept round, for each head the kept model replaced
    # by its prior (tasks/selection.py behind_prior); local: merchant -> that
    prior_heads: dict[str, Any] = field(default_factory=dict)
    # task -> (a, b): the kept model's head output z became a z + b, fitted on validation
    # (tasks/calibration.py); local: merchant -> that
    calibration: dict[str, Any] = field(default_factory=dict)
    # Newton steps the kept model's per-id biases took on the train and validation rows together
    # (refit_biases, tasks/experiment.py); local: the most any merchant's took
    refit_steps: int = 0
    # Newton steps the kept model's embedding rows took after them (refit_embeddings); local: the most
    embedding_refit_steps: int = 0


def _clean(value: Any) -> Any:
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def metrics_document(result: RunResult) -> dict[str, Any]:
    return _clean({
        "mode": result.mode,
        "task_list": result.tasks,
        "tasks": result.final,
        "per_merchant": result.per_merchant,
        "selected_round": result.selected_round,
        "prior_heads": result.prior_heads,
        "calibration": result.calibration,
        "refit_steps": result.refit_steps,
        "embedding_refit_steps": result.embedding_refit_steps,
        "select_round": result.config.get("select_round"),
        "rounds": [{"round": r.round, "tasks": r.tasks, "validation": r.validation, "train_loss": r.train_loss,
                    **({"privacy": r.privacy} if r.privacy else {}),
                    **({"bias_priors": r.bias_priors} if r.bias_priors else {})} for r in result.rounds],
        "oracle": result.oracle,
        "failures": result.failures,
        "merchant_train_rows": result.merchant_rows,
        "plan": result.plan,
        "bad_rows": result.bad_rows,
        "config": result.config,
    })


def read_metrics_document(path: Path) -> RunResult:
    """A finished run's metrics.json back as the RunResult the reports read: final and per-merchant
    metrics, kept round, config; the rounds and the model state stay behind (undefined metrics: None)."""
    doc = json.loads(Path(path).read_text())
    return RunResult(doc["mode"], list(doc["task_list"]), [], doc["tasks"], doc["per_merchant"], doc["selected_round"],
                     {}, doc["config"], doc.get("oracle"), doc.get("failures", []), doc.get("plan"),
                     doc.get("merchant_train_rows", {}), doc.get("bad_rows", {}), doc.get("prior_heads", {}),
                     doc.get("calibration", {}), doc.get("refit_steps", 0), doc.get("embedding_refit_steps", 0))


def round_table_header(metric_names: dict[str, tuple[str, ...]]) -> str:
    cells = ["round"] + [f"{t}.{m}" for t, names in metric_names.items() for m in names]
    return "  ".join(f"{c:>14}" for c in cells)


def round_table_row(record: RoundRecord, metric_names: dict[str, tuple[str, ...]]) -> str:
    cells = [f"{record.round:>14d}"]
    for t, names in metric_names.items():
        for m in names:
            v = record.tasks.get(t, {}).get(m)
            cells.append(f"{v:>14.4f}" if v is not None and math.isfinite(v) else f"{'-':>14}")
    return "  ".join(cells)


def log_round(record: RoundRecord, metric_names: dict[str, tuple[str, ...]]) -> None:
    """One row of the per-round table (header before round 0)."""
    if record.round == 0:
        log(INFO, "per-round test metrics (merchants weighted by test labels):")
        log(INFO, round_table_header(metric_names))
    log(INFO, round_table_row(record, metric_names))


def plot_rounds(result: RunResult, path: Path, metric_names: dict[str, tuple[str, ...]]) -> None:
    xs = [r.round for r in result.rounds]
    for ax, task, metric in metric_panels(metric_names, path, f"merchant-fl ({result.mode})", "round"):
        ax.plot(xs, [r.tasks.get(task, {}).get(metric, math.nan) for r in result.rounds], marker="o", ms=3,
                label=result.mode)
        if result.oracle and metric in result.oracle.get(task, {}):
            ax.axhline(result.oracle[task][metric], color="grey", ls="--", lw=1, label="oracle")


def write_outputs(result: RunResult, output_dir: Path, metric_names: dict[str, tuple[str, ...]]) -> None:
    """Model and plot first, metrics.json last: its presence means the run finished."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"mode": result.mode, "tasks": result.tasks, "state": result.model_state,
                "config": result.config, "plan": result.plan}, output_dir / "model.pt")
    plot_rounds(result, output_dir / "metrics.png", metric_names)
    if result.merchant_rows:
        plot_merchants({result.mode: result}, output_dir / "merchants.png", metric_names)
    tmp = output_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics_document(result), indent=1))
    tmp.replace(output_dir / "metrics.json")
    log(INFO, "kept round %s (select_round=%s); its test metrics: %s", result.selected_round,
        result.config.get("select_round"), json.dumps(_clean(result.final)))
    log(INFO, "outputs written to %s", output_dir.resolve())
