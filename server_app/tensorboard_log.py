"""logger=tensorboard: each round's metrics as TensorBoard scalars in the run directory.

torch.utils.tensorboard (and the tensorboard package behind it) is imported only when a run asks for
it, so the default logger=none costs nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from server_app.outputs import RoundRecord
from tasks.metrics import Metrics


def scalars(prefix: str, metrics: Mapping[str, Metrics]) -> dict[str, float]:
    """{task: {metric: value}} -> {"prefix/task/metric": value}, finite values only."""
    return {f"{prefix}/{task}/{name}": float(value) for task, values in metrics.items()
            for name, value in values.items() if value is not None and math.isfinite(value)}


def round_scalars(record: RoundRecord, per_merchant: Mapping[str, Mapping[str, Metrics]] | None
                  ) -> dict[str, float]:
    """Every scalar of one round: test and validation metrics (merchants combined), train loss per
    task, and each merchant's test metrics when given."""
    out = {**scalars("test", record.tasks), **scalars("validation", record.validation),
           **{f"train_loss/{task}": float(v) for task, v in record.train_loss.items()
              if v is not None and math.isfinite(v)}}
    for merchant, metrics in (per_merchant or {}).items():
        out.update(scalars(f"merchant/{merchant}", metrics))
    return out


class TensorBoardLog:
    """Writes to `output_dir / cfg["dir"]`; the directory is made at the first round, so a run that
    fails before training leaves nothing behind."""

    def __init__(self, output_dir: Path, cfg: Mapping[str, Any]) -> None:
        self.path = Path(output_dir) / str(cfg.get("dir", "tensorboard"))
        self.per_merchant = bool(cfg.get("per_merchant", True))
        self._writer = None

    def write(self, record: RoundRecord, per_merchant: Mapping[str, Mapping[str, Metrics]] | None) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=str(self.path))
        for tag, value in round_scalars(record, per_merchant if self.per_merchant else None).items():
            self._writer.add_scalar(tag, value, record.round)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
