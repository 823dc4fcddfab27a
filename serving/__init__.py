"""Using a trained run: `load(run_dir)` -> `.score(frame)` and `.recommend(merchant, user, k)`.

Imports only core, data and tasks: serving needs neither Flower nor the server."""

from serving.model import TrainedModel, load, prediction_column

__all__ = ["TrainedModel", "load", "prediction_column"]
