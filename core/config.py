"""Composes the Hydra config outside `@hydra.main`, so the ServerApp and ClientApp of `flwr run`
see exactly the config the `merchant-fl` door would."""

from __future__ import annotations

import copy
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.errors import InputError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def by_validation_split(val_fraction: Any, with_split: Any, without_split: Any) -> Any:
    """`${by_validation_split:${data.val_fraction},A,B}` in conf/: A where the data holds out a
    validation split, else B. A value that is not a number counts as none; the split itself reports it."""
    try:
        held_out = float(val_fraction) > 0
    except (TypeError, ValueError):
        held_out = False
    return with_split if held_out else without_split


OmegaConf.register_new_resolver("by_validation_split", by_validation_split, replace=True)


def split_overrides(text: str) -> list[str]:
    """Split "a=1 tasks=[x,y]" the way a shell would, so run-config strings read like a CLI."""
    return shlex.split(text or "")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The run config for a list of Hydra overrides, resolved (no interpolations left)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides or []))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise InputError(f"bad config override: {str(exc).splitlines()[0]}") from exc
    return cfg


def to_plain(cfg: DictConfig) -> dict:
    """A resolved plain dict: picklable to Ray actors and storable in metrics.json."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


@lru_cache(maxsize=8)
def _config_for(overrides: str) -> dict:
    return to_plain(compose_config(split_overrides(overrides)))


def config_from_run_config(run_config: Mapping[str, Any]) -> dict:
    """The plain config of a `flwr run` job: conf/ plus the run config's `overrides` string.

    Cached per overrides string: the ClientApp asks once per message.
    """
    return copy.deepcopy(_config_for(str(run_config.get("overrides", "") or "")))
