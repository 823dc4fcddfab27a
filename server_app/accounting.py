"""The privacy budget of a DP run: opacus' RDP accountant over the noised rounds played, (epsilon,
delta) after each, and whether the next round still fits `privacy.target_epsilon`.

Sampling: central DP (privacy=dp) composes each round at the fraction of merchants it samples
(amplification by subsampling; the strategy samples a fixed number without replacement, which the
Poisson-sampling analysis approximates, as DP-FedAvg does). Local DP (privacy=ldp) composes at rate
1: the server sees which merchants it sampled, so a merchant's own noised update gets no
amplification; its epsilon bounds every round as if the merchant took part in all of them.
"""

from __future__ import annotations

import copy
import math
import warnings

from opacus.accountants import RDPAccountant

from core.privacy import PrivacySettings


def sample_rate(settings: PrivacySettings, sampled: int, participants: int) -> float:
    """The rate a round composes at: the sampled share of merchants (dp), 1 (ldp)."""
    if settings.mode == "ldp" or participants <= 0:
        return 1.0
    return min(1.0, sampled / participants)


class PrivacyBudget:
    """(epsilon, delta) spent so far by a run's noised releases (one per training round)."""

    def __init__(self, settings: PrivacySettings) -> None:
        self.settings = settings
        self.accountant = RDPAccountant()

    def _epsilon_of(self, accountant: RDPAccountant) -> float:
        if not accountant.history:
            return 0.0
        if self.settings.noise_multiplier <= 0:
            return math.inf  # clipping alone bounds nothing
        with warnings.catch_warnings():  # "optimal order is the smallest alpha": epsilon is large, and reported
            warnings.simplefilter("ignore")
            return float(accountant.get_epsilon(delta=self.settings.delta))

    @property
    def epsilon(self) -> float:
        return self._epsilon_of(self.accountant)

    def spend(self, rate: float) -> dict[str, float]:
        """Compose one noised round at sampling rate `rate`; the (epsilon, delta) spent so far."""
        self.accountant.step(noise_multiplier=self.settings.noise_multiplier, sample_rate=rate)
        return self.spent()

    def spent(self) -> dict[str, float]:
        return {"epsilon": self.epsilon, "delta": self.settings.delta}

    def epsilon_after(self, rate: float) -> float:
        """The epsilon one more round at `rate` would bring."""
        trial = copy.deepcopy(self.accountant)
        trial.step(noise_multiplier=self.settings.noise_multiplier, sample_rate=rate)
        return self._epsilon_of(trial)

    def exceeds_target(self, rate: float) -> bool:
        target = self.settings.target_epsilon
        return target is not None and self.epsilon_after(rate) > target
