"""Server optimisers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021) as plain array math.

They step on the round's pseudo-gradient: delta = (the per-task, per-row aggregate of the replies) -
(the current global model). The multi-task rule therefore still decides *what* each parameter's
average is (a head only over its task's clients, a row only over the clients that trained it); the
optimiser only decides how far the global model moves towards it. The formulas are Flower's
(flwr.serverapp.strategy FedAvgM, FedAdam, FedYogi), written over dicts of numpy arrays so they can be
tested directly and their state checkpointed; FedAdam follows the paper, without the bias correction
Flower's FedAdam adds.

Which parameters step is the caller's choice (`names`): merchant-fl passes the model's trainable
parameters except the Newton-fitted first-order biases (those are set by a Newton step on summed
statistics, which is already a full second-order step: momentum on top would overshoot it), and
leaves out buffers and the loss weighting's state (running statistics, not parameters to move).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from core.errors import InputError
from tasks.training import proximal_mu

Arrays = Mapping[str, np.ndarray]
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi")


def fedavgm_step(current: Arrays, delta: Arrays, momentum: dict[str, np.ndarray], lr: float, beta: float
                 ) -> dict[str, np.ndarray]:
    """x <- x - lr * v with v = beta * v + (x - aggregate) (v = the first pseudo-gradient in round 1);
    beta = 0 and lr = 1 is FedAvg. Updates `momentum` in place."""
    out = {}
    for name, d in delta.items():
        gradient = -d
        momentum[name] = gradient if name not in momentum else beta * momentum[name] + gradient
        out[name] = current[name] - lr * momentum[name]
    return out


def _adaptive_step(current: Arrays, delta: Arrays, m: dict[str, np.ndarray], v: dict[str, np.ndarray],
                   eta: float, beta_1: float, tau: float, second_moment) -> dict[str, np.ndarray]:
    """x <- x + eta m / (sqrt(v) + tau), m = b1 m + (1 - b1) d, v = second_moment(v, d^2)."""
    out = {}
    for name, d in delta.items():
        m[name] = beta_1 * m.get(name, np.zeros_like(d)) + (1 - beta_1) * d
        v[name] = second_moment(v.get(name, np.zeros_like(d)), d * d)
        out[name] = current[name] + eta * m[name] / (np.sqrt(v[name]) + tau)
    return out


def fedadam_step(current: Arrays, delta: Arrays, m: dict[str, np.ndarray], v: dict[str, np.ndarray],
                 eta: float, beta_1: float, beta_2: float, tau: float) -> dict[str, np.ndarray]:
    """m = b1 m + (1 - b1) d; v = b2 v + (1 - b2) d^2; x <- x + eta m / (sqrt(v) + tau)."""
    return _adaptive_step(current, delta, m, v, eta, beta_1, tau,
                          lambda previous, d2: beta_2 * previous + (1 - beta_2) * d2)


def fedyogi_step(current: Arrays, delta: Arrays, m: dict[str, np.ndarray], v: dict[str, np.ndarray],
                 eta: float, beta_1: float, beta_2: float, tau: float) -> dict[str, np.ndarray]:
    """Adam's step with Yogi's second moment: v = v - (1 - b2) d^2 sign(v - d^2)."""
    return _adaptive_step(current, delta, m, v, eta, beta_1, tau,
                          lambda previous, d2: previous - (1 - beta_2) * d2 * np.sign(previous - d2))


@dataclass
class ServerOptimizer:
    """One strategy's options and state; `step` maps (current global, aggregate) to the new global."""
    name: str
    options: dict[str, float]
    names: list[str]                                     # the parameters that step; the rest take the aggregate
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def step(self, current: Arrays, aggregated: Arrays) -> dict[str, np.ndarray]:
        """The new global arrays; computed in float64, stored in each array's own dtype."""
        if self.name in ("fedavg", "fedprox"):
            return dict(aggregated)
        names = [n for n in self.names if n in aggregated and np.issubdtype(aggregated[n].dtype, np.floating)]
        x = {n: np.asarray(current[n], np.float64) for n in names}
        delta = {n: np.asarray(aggregated[n], np.float64) - x[n] for n in names}
        o = self.options
        if self.name == "fedavgm":
            stepped = fedavgm_step(x, delta, self.state.setdefault("momentum", {}), o["server_lr"], o["momentum"])
        else:
            rule = fedadam_step if self.name == "fedadam" else fedyogi_step
            stepped = rule(x, delta, self.state.setdefault("m", {}), self.state.setdefault("v", {}),
                           o["eta"], o["beta_1"], o["beta_2"], o["tau"])
        for slot in self.state.values():  # kept in each parameter's dtype: half the memory and checkpoint
            slot.update({n: slot[n].astype(aggregated[n].dtype) for n in names})
        result = dict(aggregated)
        result.update({n: value.astype(aggregated[n].dtype) for n, value in stepped.items()})
        return result


OPTIONS = {"fedavg": (), "fedprox": ("proximal_mu",), "fedavgm": ("server_lr", "momentum"),
           "fedadam": ("eta", "beta_1", "beta_2", "tau"), "fedyogi": ("eta", "beta_1", "beta_2", "tau")}


def strategy_name(strategy_cfg: Mapping[str, Any]) -> str:
    name = str(strategy_cfg.get("name"))
    if name not in STRATEGIES:
        raise InputError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return name


def server_optimizer(strategy_cfg: Mapping[str, Any], names: Sequence[str]) -> ServerOptimizer:
    """The configured optimiser over `names`, its options checked to one clear line each."""
    name = strategy_name(strategy_cfg)
    options = {}
    for key in OPTIONS[name]:
        try:
            options[key] = float(strategy_cfg[key])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"strategy={name} needs a number strategy.{key}, got {strategy_cfg.get(key)!r}") from None
    if name in ("fedadam", "fedyogi"):
        if not (0 <= options["beta_1"] < 1 and 0 <= options["beta_2"] < 1):
            raise InputError(f"strategy.beta_1 and strategy.beta_2 must lie in [0, 1), got "
                             f"{options['beta_1']:g}, {options['beta_2']:g}")
        if not (options["tau"] > 0 and options["eta"] > 0):
            raise InputError(f"strategy.eta and strategy.tau must be > 0, got {options['eta']:g}, {options['tau']:g}")
    if name == "fedavgm" and not (options["server_lr"] > 0 and 0 <= options["momentum"] < 1):
        raise InputError(f"strategy.server_lr must be > 0 and strategy.momentum in [0, 1), got "
                         f"{options['server_lr']:g}, {options['momentum']:g}")
    proximal_mu(strategy_cfg)
    return ServerOptimizer(name, options, list(names))
