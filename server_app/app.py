"""The ServerApp: `flwr run .` loads `app`; the Hydra door builds its own with `make_server_app`."""

from __future__ import annotations

from datetime import datetime
from logging import ERROR
from pathlib import Path
from typing import Any, Callable

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from core.config import config_from_run_config
from core.errors import InputError
from server_app.orchestration import run_job
from server_app.setup import Directory
from server_app.strategy import RoundFailed


def output_dir_from_run_config(context: Context) -> Path:
    given = str(context.run_config.get("output-dir", "") or "")
    if given:
        return Path(given).expanduser().resolve()
    return (Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")).resolve()


def make_server_app(config_of: Callable[[Context], dict], output_dir_of: Callable[[Context], Path],
                    outcome: dict[str, Any] | None = None, grid_view: Callable[[Grid], Grid] | None = None,
                    directory: Directory | None = None) -> ServerApp:
    """A ServerApp running one job; `outcome` (if given) receives the result or the error, for the caller;
    `grid_view` (if given) wraps Flower's grid, e.g. to record every message reaching the server;
    `directory` (if given) names simulated nodes' merchants (launch/simulation.py)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            result = run_job(config_of(context), output_dir_of(context), grid_view(grid) if grid_view else grid,
                             directory)
        except (InputError, RoundFailed) as exc:
            log(ERROR, "merchant-fl: error: %s", exc)
            if outcome is None:
                raise
            outcome["error"] = exc
            return
        if outcome is not None:
            outcome["result"] = result

    return app


app = make_server_app(lambda context: config_from_run_config(context.run_config), output_dir_from_run_config)
