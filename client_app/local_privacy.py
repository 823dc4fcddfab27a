"""What a node's model update looks like when it leaves: as trained, or under local DP (privacy=ldp)
clipped and noised here, so the server never sees the update itself (core/privacy.py has the math)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from flwr.app import Array, ArrayRecord

from core.privacy import PrivacySettings, noise_generator, privatize_locally


def outgoing_state(sent: ArrayRecord, trained: Mapping[str, torch.Tensor], cfg: Mapping[str, Any],
                   server_round: int, merchant_index: int) -> ArrayRecord:
    """The ArrayRecord a train reply carries. Under ldp the noise comes from fresh OS entropy unless
    privacy.noise_seed fixes it (per round and merchant; reproducible experiments only)."""
    settings = PrivacySettings.from_config(cfg)
    if settings.mode != "ldp":
        return ArrayRecord(dict(trained))
    state = {name: value.numpy() for name, value in trained.items()}
    private = privatize_locally({name: array.numpy() for name, array in sent.items()}, state, settings.clip_norm,
                                settings.noise_multiplier,
                                noise_generator(settings.noise_seed, server_round, merchant_index))
    return ArrayRecord({name: Array(value) for name, value in private.items()})
