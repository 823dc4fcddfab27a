"""One table and one plot per `merchant-fl -m` sweep, so jobs are compared without opening each folder.

Hydra calls `SweepSummary` after each job of a sweep and when it ends; `python -m launch.sweep MULTIRUN_DIR`
redoes it for an existing sweep. Both write summary.csv, summary.md and summary.png into the sweep directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

FIXED_COLUMNS = ["job", "overrides", "status"]
ORACLE = "oracle"
# The one headline metric per task kind that the plot compares.
PLOTTED_METRIC = {"binary": "auc", "regression": "rmse"}


def _tasks() -> dict[str, Any]:
    """The task registry, imported late: it pulls in torch, which `--help` and the error path don't need."""
    from tasks.registry import TASKS
    return TASKS


@dataclass
class Summary:
    """What a summary produced, so the callback and the command line report it the same way."""
    table: pd.DataFrame
    markdown: str
    paths: list[Path]


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders in Hydra's order: numbered ones (subdir=${hydra.job.num}) or any holding a job's files."""
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and
            (p.name.isdigit() or (p / ".hydra").is_dir() or (p / "metrics.json").is_file())]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def _read_overrides(job_dir: Path) -> str:
    path = job_dir / ".hydra" / "overrides.yaml"
    return " ".join(str(o) for o in (yaml.safe_load(path.read_text()) or [])) if path.is_file() else ""


def _read_metrics(job_dir: Path) -> dict[str, Any] | None:
    """None when the job never finished: metrics.json is written last, so its absence means failure."""
    try:
        return json.loads((job_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _flatten(tasks: dict[str, dict[str, float | None]] | None) -> dict[str, float]:
    return {f"{task}.{metric}": (math.nan if value is None else float(value))
            for task, metrics in (tasks or {}).items() for metric, value in metrics.items()}


def _column_order(columns: Sequence[str]) -> list[str]:
    """Registry order (task, then its metric_names), so every sweep's table reads the same way."""
    known = [f"{t.name}.{m}" for t in _tasks().values() for m in t.metric_names]
    return [c for c in known if c in columns] + sorted(c for c in columns if c not in known)


def _merge_oracles(oracles: list[tuple[str, dict[str, dict[str, float | None]]]]) -> dict[str, float]:
    """Each job's oracle scores only its own tasks, so the row takes every task from the first job having it.

    The oracle is the data's ground truth: jobs on the same data agree, and a disagreement means the sweep
    varied the data, so one oracle row cannot stand for every job.
    """
    merged: dict[str, float] = {}
    for job, oracle in oracles:
        for column, value in _flatten(oracle).items():
            if math.isnan(value):
                continue
            if column not in merged:
                merged[column] = value
            elif not math.isclose(merged[column], value, rel_tol=1e-9):
                log.warning("oracle %s differs in job %s (the sweep varies the data?); the oracle row shows "
                            "the first job's", column, job)
    return merged


def collect_rows(sweep_dir: Path) -> pd.DataFrame:
    """One row per job folder (job, overrides, status, <task>.<metric>...) and an "oracle" row if any job has one."""
    rows, oracles = [], []
    for job_dir in find_jobs(sweep_dir):
        doc = _read_metrics(job_dir)
        rows.append({"job": job_dir.name, "overrides": _read_overrides(job_dir),
                     "status": "ok" if doc is not None else "failed", **_flatten((doc or {}).get("tasks"))})
        if doc and doc.get("oracle"):
            oracles.append((job_dir.name, doc["oracle"]))
    if oracles:
        rows.append({"job": ORACLE, "overrides": "", "status": "", **_merge_oracles(oracles)})
    frame = pd.DataFrame(rows)
    metrics = _column_order([c for c in frame.columns if c not in FIXED_COLUMNS])
    return frame.reindex(columns=FIXED_COLUMNS + metrics)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-style table; written by hand because pandas' to_markdown needs tabulate."""
    lines = ["| " + " | ".join(frame.columns) + " |",
             "|" + "|".join("---:" if c not in FIXED_COLUMNS else "---" for c in frame.columns) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_table(frame: pd.DataFrame, sweep_dir: Path, plot: Path | None = None) -> tuple[Path, Path, str]:
    """summary.csv (full precision, blank = no value) and summary.md; returns both paths and the table."""
    csv_path, md_path = sweep_dir / "summary.csv", sweep_dir / "summary.md"
    frame.to_csv(csv_path, index=False, na_rep="")
    table = markdown_table(frame)
    image = f"\n![sweep summary]({plot.name})\n" if plot else ""
    md_path.write_text(f"# Sweep summary: {sweep_dir}\n\n{table}\n{image}")
    return csv_path, md_path, table


def _panels(frame: pd.DataFrame) -> list[str]:
    """The headline column of each task (auc for binary tasks, rmse for rating) that some job has a value for."""
    jobs, tasks = frame[frame["status"] == "ok"], _tasks()
    panels = []
    for column in frame.columns[len(FIXED_COLUMNS):]:
        task, _, metric = column.partition(".")
        if task in tasks and PLOTTED_METRIC.get(tasks[task].kind) == metric and jobs[column].notna().any():
            panels.append(column)
    return panels


def _varying(overrides: Sequence[str]) -> list[str]:
    """Each job's overrides less those every job shares: bar labels name what the sweep varied."""
    split = [o.split(" ") for o in overrides]
    common = set.intersection(*map(set, split)) if split else set()
    return [" ".join(o for o in job if o not in common) for job in split]


def plot_summary(frame: pd.DataFrame, path: Path) -> Path | None:
    """One panel per headline metric, a bar per finished job, the oracle dashed; None if nothing to plot."""
    panels = _panels(frame)
    if not panels:
        path.unlink(missing_ok=True)  # a stale plot from an earlier summary would mislead
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = frame[frame["status"] == "ok"].assign(label=lambda f: _varying(f["overrides"].to_list()))
    oracle = frame[frame["job"] == ORACLE]
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    height = max(2.4, 1.2 + 0.45 * len(jobs))
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, height * rows), squeeze=False)
    for ax, column in zip(axes.flat, panels):
        have = jobs[jobs[column].notna()]
        labels = [textwrap.fill(f"{job}: {ov}" if ov else job, 40) for job, ov in zip(have["job"], have["label"])]
        values = have[column].to_list()
        bars = ax.barh(range(len(values)), values, color="tab:blue", alpha=0.8)
        ax.bar_label(bars, fmt="%.4f", fontsize=7, padding=2)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()  # job 0 on top, as in the table
        shown = list(values)
        if not oracle.empty and pd.notna(oracle[column].iloc[0]):
            ax.axvline(oracle[column].iloc[0], color="black", ls="--", lw=1, zorder=3, label="oracle")
            ax.legend(fontsize=7, loc="lower right")
            shown.append(oracle[column].iloc[0])
        lo, hi = min(shown), max(shown)  # zoom: the jobs differ in the 2nd-3rd decimal, not from zero
        pad = 0.15 * (hi - lo) or 0.05 * abs(hi) or 0.05
        ax.set_xlim(lo - pad, hi + 2 * pad)
        task, _, metric = column.partition(".")
        better = "higher" if metric in _tasks()[task].higher_is_better else "lower"
        ax.set_title(f"{column} ({better} is better)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarize(sweep_dir: Path) -> Summary:
    """Table and plot for one sweep directory; raises FileNotFoundError when it holds no job folders."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such directory")
    if not find_jobs(sweep_dir):
        raise FileNotFoundError(f"{sweep_dir}: no job folders (expected Hydra's numbered job dirs 0, 1, ...)")
    frame = collect_rows(sweep_dir)
    plot = plot_summary(frame, sweep_dir / "summary.png")
    csv_path, md_path, table = write_table(frame, sweep_dir, plot)
    return Summary(frame, table, [csv_path, md_path] + ([plot] if plot else []))


def report(summary: Summary) -> None:
    print(summary.markdown)
    for path in summary.paths:
        print(f"wrote {path}")


def _sweep_dir(config: DictConfig) -> Path:
    """hydra.sweep.dir is relative to where merchant-fl started, which is not the cwd if a job chdir'ed."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    cwd = OmegaConf.select(config, "hydra.runtime.cwd", default=None)
    return sweep_dir if sweep_dir.is_absolute() or not cwd else Path(cwd) / sweep_dir


class SweepSummary(Callback):
    """Registered under hydra.callbacks: summarizes after every job and prints the table when the sweep ends.

    Why after every job too: Hydra skips on_multirun_end when any job raised, and a sweep with a failed
    job is the one whose summary matters most.
    """

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode", default=None) == RunMode.MULTIRUN:
            summarize(_sweep_dir(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        report(summarize(_sweep_dir(config)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.sweep",
                                     description="Summarize a finished `merchant-fl -m` sweep directory.")
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory, e.g. multirun/2026-11-30/12-00-00")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.sweep_dir)
    except FileNotFoundError as exc:
        print(f"merchant-fl sweep: error: {exc}", file=sys.stderr)
        return 2
    report(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
