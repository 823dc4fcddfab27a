"""Model registry: `model.name` in the config picks the architecture; all share one constructor."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from core.errors import InputError
from data.features import FeatureSpec
from tasks.models.base import MultiTaskModel, PerTask, PerTaskParameters, id_dropout_rates, parameter_tasks
from tasks.models.esmm import ESMM
from tasks.models.mmoe import MMoE
from tasks.models.ple import PLE
from tasks.models.shared_bottom import SharedBottom

MODELS: dict[str, type[MultiTaskModel]] = {
    "shared_bottom": SharedBottom,
    "mmoe": MMoE,
    "ple": PLE,
    "esmm": ESMM,
}


def build_model(model_cfg: Mapping[str, Any], buckets: FeatureSpec | Sequence[int], tasks: Sequence[str]
                ) -> MultiTaskModel:
    """The configured architecture; `model.id_dropout=auto` needs the run plan's cold shares
    (tasks/experiment.py resolves it), so here, without them, it is 0."""
    options = dict(model_cfg)
    if str(options.get("id_dropout")) == "auto":
        options["id_dropout"] = id_dropout_rates("auto", {}, [])
    name = options.pop("name")
    if name not in MODELS:
        raise InputError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    try:
        return MODELS[name](buckets, tasks, **options)
    except TypeError as exc:
        raise InputError(f"model={name}: {exc}") from exc


__all__ = ["MODELS", "MultiTaskModel", "PerTask", "PerTaskParameters", "build_model", "id_dropout_rates",
           "parameter_tasks"]
