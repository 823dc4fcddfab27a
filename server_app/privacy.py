"""The round loop's privacy (privacy=none|dp|ldp): which aggregation rule the strategy applies, the
budget each noised round spends, and whether a round may still be played under the target epsilon.
The math lives in core/privacy.py, server_app/private_aggregation.py and server_app/accounting.py."""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any, Mapping, Sequence

import numpy as np
from flwr.common.logger import log

from core.privacy import PrivacySettings, noise_generator
from server_app.accounting import PrivacyBudget, sample_rate
from server_app.aggregation import ClientUpdate, aggregate
from server_app.private_aggregation import private_mean


class PrivateRounds:
    def __init__(self, settings: PrivacySettings) -> None:
        self.settings = settings
        self.budget = PrivacyBudget(settings) if settings.clips else None
        self.rng = noise_generator(settings.noise_seed)
        self.rate = 1.0
        self.stopped_at: int | None = None  # the round the target epsilon did not let play

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "PrivateRounds":
        return cls(PrivacySettings.from_config(cfg))

    def combine(self, current: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
                owners: Mapping[str, str | None], row_tables: Sequence[str] = (), method: str = "mean",
                trim_fraction: float = 0.0, row_progress_power: float = 0.0) -> dict[str, np.ndarray]:
        """The strategy's aggregation: multi-task FedAvg (with federation.aggregation's mean), or under
        DP the unweighted mean of clipped updates, noised here (dp) or already noised by each node (ldp)."""
        if not self.settings.clips:
            return aggregate(current, updates, owners, row_tables, method, trim_fraction, row_progress_power)
        central = self.settings.mode == "dp"
        arrays, report = private_mean(current, updates, owners, self.settings.clip_norm if central else None,
                                      self.settings.noise_multiplier, self.rng)
        if central:
            log(INFO, "privacy=dp: %d of %d updates clipped to %g (median norm %.4g); mean update norm %.4g, "
                "noise norm %.4g (noise multiplier %g)", report.clipped, report.updates, self.settings.clip_norm,
                report.median_norm, report.signal, report.noise, self.settings.noise_multiplier)
        return arrays

    def may_play(self, server_round: int, sampled: int, participants: int) -> bool:
        """Whether round `server_round` fits the target epsilon (or on_target=warn lets it play anyway)."""
        if self.budget is None:
            return True
        self.rate = sample_rate(self.settings, sampled, participants)
        if not self.budget.exceeds_target(self.rate):
            return True
        after = self.budget.epsilon_after(self.rate)
        if self.settings.on_target == "warn":
            log(WARNING, "privacy: round %d brings epsilon to %.4g, over privacy.target_epsilon=%g "
                "(privacy.on_target=warn: played anyway)", server_round, after, self.settings.target_epsilon)
            return True
        log(WARNING, "privacy: round %d would bring epsilon to %.4g, over privacy.target_epsilon=%g: training "
            "stops after round %d (privacy.on_target=stop)", server_round, after, self.settings.target_epsilon,
            server_round - 1)
        self.stopped_at = server_round
        return False

    def spend(self, server_round: int) -> None:
        """Account for one released aggregate (a training round that updated the model)."""
        if self.budget is None:
            return
        spent = self.budget.spend(self.rate)
        log(INFO, "round %d: privacy spent epsilon=%.4g at delta=%g (privacy=%s, noise multiplier %g, "
            "sampling rate %.3g)", server_round, spent["epsilon"], spent["delta"], self.settings.mode,
            self.settings.noise_multiplier, self.rate)

    def record(self) -> dict[str, float]:
        """(epsilon, delta) so far, for metrics.json; empty under privacy=none."""
        return {} if self.budget is None else self.budget.spent()
