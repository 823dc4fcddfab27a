"""What a user sees while a run trains. The federated loop and the baselines report each round to one
`RunProgress`; it draws a progress bar with the latest per-task metrics on a terminal, prints the
per-round table as plain log lines otherwise (a pipe, a file, `flwr run`'s ServerApp process), and
feeds TensorBoard when the run's `logger` asks for it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from core.errors import InputError
from server_app.outputs import RoundRecord, log_round, round_table_header, round_table_row
from server_app.tensorboard_log import TensorBoardLog
from tasks.metrics import Metrics

LOGGERS = ("none", "tensorboard")
MetricNames = Mapping[str, tuple[str, ...]]


def latest_metrics(record: RoundRecord, metric_names: MetricNames) -> str:
    """'rating rmse 1.0123  purchase auc 0.7712  click auc 0.7301': each task's headline metric this
    round, merchants combined (the table above the bar has them all); short enough for 80 columns."""
    cells = []
    for task, names in metric_names.items():
        value = record.tasks.get(task, {}).get(names[0]) if names else None
        if value is not None and math.isfinite(value):
            cells.append(f"{task} {names[0]} {value:.4f}")
    return "  ".join(cells)


class BarDisplay:
    """A rich progress bar over training steps (rounds, or epochs for the baselines), the latest
    metrics beside it and the per-round table printed above it."""

    def __init__(self, console: Console, description: str, total_steps: int, steps_per_round: int) -> None:
        self.steps_per_round = steps_per_round
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
                                 TimeElapsedColumn(),
                                 TextColumn("{task.fields[metrics]}",  # takes what is left of the line
                                            table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
                                 console=console, expand=True)
        self.task = self.progress.add_task(description, total=total_steps, metrics="")
        self.progress.start()

    def show(self, record: RoundRecord, metric_names: MetricNames) -> None:
        if record.round == 0:
            self.progress.console.print(round_table_header(metric_names), highlight=False)
        self.progress.console.print(round_table_row(record, metric_names), highlight=False)
        self.progress.update(self.task, completed=record.round * self.steps_per_round,
                             metrics=latest_metrics(record, metric_names))

    def close(self) -> None:
        self.progress.stop()


class RunProgress:
    """The one object a training loop reports to, once per round (round 0 = the untrained model)."""

    def __init__(self, mode: str, rounds: int, steps_per_round: int = 1, output_dir: Path | None = None,
                 logger: Mapping[str, Any] | None = None, console: Console | None = None) -> None:
        name = str((logger or {}).get("name", "none"))
        if name not in LOGGERS:
            raise InputError(f"unknown logger {name!r} (known: {', '.join(LOGGERS)})")
        self.console = console if console is not None else Console()
        self.unit = "round" if mode == "federated" else "epoch"
        self.description = f"{mode} {self.unit}s"
        self.total_steps = rounds * steps_per_round
        self.steps_per_round = steps_per_round
        self.tensorboard = TensorBoardLog(output_dir, logger or {}) if name == "tensorboard" and output_dir else None
        self.bar: BarDisplay | None = None

    @classmethod
    def for_run(cls, cfg: Mapping[str, Any], output_dir: Path | None, console: Console | None = None
                ) -> "RunProgress":
        """Federated steps are rounds; a baseline's are epochs (train.local_epochs per round)."""
        mode = str(cfg["mode"])
        steps = 1 if mode == "federated" else int(cfg["train"]["local_epochs"])
        return cls(mode, int(cfg["federation"]["rounds"]), steps, output_dir, cfg.get("logger"), console)

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def report(self, record: RoundRecord, metric_names: MetricNames,
               per_merchant: Mapping[str, Mapping[str, Metrics]] | None = None) -> None:
        if self.interactive:
            if self.bar is None:
                self.bar = BarDisplay(self.console, self.description, self.total_steps, self.steps_per_round)
            self.bar.show(record, metric_names)
        else:
            log_round(record, metric_names)
        if self.tensorboard is not None:
            self.tensorboard.write(record, per_merchant)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def __enter__(self) -> "RunProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
