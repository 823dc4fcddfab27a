"""`merchant-fl`: a Hydra app running one job per config (`-m` sweeps many)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from core.config import CONF_DIR, to_plain
from core.errors import InputError
from core.privacy import PrivacySettings
from data.partition import record_partition
from server_app.orchestration import run_job
from server_app.strategy import RoundFailed


def run(cfg: DictConfig, output_dir: Path) -> None:
    plain = to_plain(cfg)
    PrivacySettings.from_config(plain)  # an unsupported privacy combination fails before anything starts
    if plain["data"]["source"] == "table":  # which rows each merchant held, next to the run's outputs
        record_partition(plain["data"], output_dir)
    if plain["mode"] == "federated":
        from launch.simulation import run_federated_simulation
        run_federated_simulation(plain, output_dir)
    else:
        run_job(plain, output_dir)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (InputError, RoundFailed) as exc:
        print(f"merchant-fl: error: {exc}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed and the sweep goes on; its summary lists it
        sys.exit(2)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
