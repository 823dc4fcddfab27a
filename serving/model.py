"""A finished run put to use: rebuild its model from the run directory, score rows, recommend items.

model.pt holds everything the model is rebuilt from: the kept state, the resolved config (model,
hashing buckets, feature columns) and the run plan (tasks and the label statistics that scale the
rating head). Rows are encoded by data.shards.encode_features from the config's feature columns,
exactly as training encoded them, so feature columns a run adds are scored without change here.
A mode=local run holds one model per merchant, and each merchant's rows are scored by its own.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from core.errors import InputError
from data.schema import MERCHANT
from data.features import feature_columns
from data.shards import encode_features
from serving.catalogue import Interactions, candidate_rows, merchant_interactions, normalised_ids
from tasks.experiment import Experiment, experiment_for
from tasks.models import MultiTaskModel
from tasks.plan import RunPlan
from tasks.ranking import ranking_task
from tasks.registry import Task
from tasks.state import WEIGHTING_PREFIX
from tasks.training import predict

MODEL_FILE = "model.pt"


def prediction_column(task: Task) -> str:
    """`predicted_rating` for a value, `click_probability` for a binary head."""
    return f"{task.name}_probability" if task.kind == "binary" else f"predicted_{task.name}"


def _read_checkpoint(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    path = run_dir / MODEL_FILE
    if not path.is_file():
        raise InputError(f"{run_dir}: no {MODEL_FILE} (a run writes it when it finishes; is this a run's "
                         "output directory?)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise InputError(f"{path}: cannot read: {str(exc).splitlines()[0]}") from exc
    missing = [key for key in ("mode", "state", "config", "plan") if not checkpoint.get(key)]
    if missing:
        raise InputError(f"{path}: no {missing[0]!r} in it; runs written before the model could be served "
                         "lack the run plan: train again")
    return checkpoint


def _model(experiment: Experiment, state: Mapping[str, torch.Tensor], device: torch.device) -> MultiTaskModel:
    """The run's architecture over its feature spec (buckets, numerical scaling from the plan), with `state`."""
    model = experiment.new_model()
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(WEIGHTING_PREFIX)})
    return model.to(device).eval()


@dataclass
class TrainedModel:
    run_dir: Path
    mode: str
    cfg: Mapping[str, Any]
    tasks: list[Task]
    shared: MultiTaskModel | None                                # one model for every merchant ...
    own: dict[str, MultiTaskModel] = field(default_factory=dict)  # ... or one per merchant (mode=local)
    device: torch.device = torch.device("cpu")

    @property
    def columns(self) -> list[str]:
        """The input columns: merchant_id (which model scores a row) and the model's feature columns."""
        return list(dict.fromkeys([MERCHANT, *feature_columns(self.cfg["data"]).all]))

    @property
    def output_columns(self) -> list[str]:
        return [prediction_column(t) for t in self.tasks]

    def model_for(self, merchant: str) -> MultiTaskModel:
        """The shared model, or the merchant's own one in a mode=local run."""
        if self.shared is not None:
            return self.shared
        if merchant not in self.own:
            shown = ", ".join(sorted(self.own)[:8]) + (", ..." if len(self.own) > 8 else "")
            raise InputError(f"unknown merchant {merchant!r}: this mode=local run has one model per merchant, "
                             f"for {shown}")
        return self.own[merchant]

    def score(self, frame: pd.DataFrame, source: str = "the table", first_row: int = 1) -> pd.DataFrame:
        """One column per task (predicted rating; click and purchase probability), aligned with `frame`.

        A shared model scores any merchant's rows, also a merchant that was not in the run (its ids
        were hashed the same way); a mode=local run scores only its merchants. `source` and
        `first_row` name the table and its first row in error messages.
        """
        ids = pd.DataFrame(normalised_ids(frame, self.columns, source, first_row))
        features = encode_features(ids, self.cfg["data"])
        out = {t.name: np.empty(len(frame), np.float32) for t in self.tasks}
        groups = {None: np.arange(len(frame))} if self.shared is not None else \
            ids.groupby(MERCHANT, sort=False).indices
        for merchant, positions in groups.items():
            predictions = predict(self.model_for(str(merchant)), features[positions], self.tasks, self.device)
            for name, values in predictions.items():
                out[name][positions] = values
        return pd.DataFrame({prediction_column(t): out[t.name] for t in self.tasks}, index=frame.index)

    def ranking_task(self, by: str | None = None) -> Task:
        """The head that orders recommendations: `by`, else the run's ranking head (rating, else click)."""
        task = ranking_task(self.tasks, by or str(self.cfg["ranking"]["task"]))
        if task is None:
            raise InputError("this run has no task to rank by")
        return task

    def recommend(self, merchant: str, user: str, k: int = 10, include_seen: bool = False,
                  interactions: Interactions = None, by: str | None = None) -> pd.DataFrame:
        """The top-`k` items of the merchant's catalogue for the user, best first: rank, item_id, one
        column per task, and `seen` (whether the user touched the item) when `include_seen`.

        `interactions` (a file or DataFrame holding the merchant's rows) gives the catalogue and the
        user's items; None = the run's own data as its config names it (serving/catalogue.py).
        Ties keep catalogue order.
        """
        merchant, user = str(merchant).strip(), str(user).strip()
        if int(k) < 1:
            raise InputError(f"k must be at least 1, got {k}")
        head = self.ranking_task(by)
        self.model_for(merchant)
        rows, source = merchant_interactions(merchant, interactions, self.columns, self.cfg["data"])
        candidates, seen = candidate_rows(rows, merchant, user, self.columns, source, include_seen)
        scores = self.score(candidates, source)
        order = np.argsort(-scores[prediction_column(head)].to_numpy(np.float64), kind="stable")[:int(k)]
        top = pd.DataFrame({"rank": np.arange(1, len(order) + 1), "item_id": candidates["item_id"].to_numpy()[order]})
        for column in scores.columns:
            top[column] = scores[column].to_numpy()[order]
        if include_seen:
            top["seen"] = seen[order]
        top.attrs["ranked_by"] = prediction_column(head)
        return top


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The model(s) of a finished run, ready to score: `load("outputs/2026-01-01/12-00-00")`."""
    run_dir = Path(run_dir).expanduser()
    checkpoint = _read_checkpoint(run_dir)
    cfg, mode = checkpoint["config"], str(checkpoint["mode"])
    experiment = experiment_for(cfg, RunPlan.from_json(json.dumps(checkpoint["plan"])))
    device = torch.device(device)
    state = checkpoint["state"]
    if mode == "local":
        own = {str(m): _model(experiment, s, device) for m, s in state.items()}
        return TrainedModel(run_dir, mode, cfg, experiment.tasks, None, own, device)
    return TrainedModel(run_dir, mode, cfg, experiment.tasks, _model(experiment, state, device), {}, device)
