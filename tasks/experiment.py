"""One run's resolved setup (plan, tasks, model builders), identical on the server and on every node.

Federated, nothing here holds data: the server builds it from the plan it fixed, each node from the
plan the server sent. The centralized and local baselines also get `index`, every merchant's prepared
data, since they are the references that may pool what federation may not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping

import numpy as np
import torch

from core import protocol
from core.errors import InputError
from core.runtime import resolve_device
from data.partition import read_manifest, partition_table
from data.features import feature_columns
from data.shards import PreparedMerchant, Shard, feature_spec, prepare_merchant
from data.splits import split_fractions
from tasks.calibration import fit_calibration
from tasks.embedding_newton import (EMBEDDING_REFIT_STEPS, embedding_newton_settings, embedding_newton_update,
                                    refit_prior_scale)
from tasks.metrics import Metrics
from tasks.models import MultiTaskModel, build_model, id_dropout_rates
from tasks.personalization import personalization_of
from tasks.plan import RunPlan, plan_from_summaries
from tasks.registry import TASKS, Task, resolve_tasks
from tasks.selection import behind_prior
from tasks.state import joint_state, load_joint_state
from tasks.training import bias_prior_value, newton_fit
from tasks.weighting import LossWeighting, build_weighting
from tasks.wide import GLOBAL_BIAS, WideStats, newton_settings, newton_update, refit_steps


@dataclass(frozen=True)
class MerchantIndex:
    """Every merchant's prepared data, in merchant order: what the in-process baselines train on."""
    merchants: list[PreparedMerchant]

    @property
    def merchant_ids(self) -> list[str]:
        return [m.merchant_id for m in self.merchants]

    def merchant(self, merchant_id: str) -> PreparedMerchant:
        return self.merchants[self.merchant_ids.index(merchant_id)]


@dataclass
class Experiment:
    cfg: Mapping[str, Any]
    plan: RunPlan
    tasks: list[Task]
    index: MerchantIndex | None = None  # baselines only

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def metric_names(self) -> dict[str, tuple[str, ...]]:
        return {t.name: t.metric_names for t in self.tasks}

    @property
    def features(self) -> list[str]:
        """Names of the model input's columns: hashed ones first, then numerical (data/features.py)."""
        return feature_columns(self.cfg["data"]).all

    @property
    def first_order_columns(self) -> list[str]:
        """Names of the first-order tables' columns, in the model's order: hashed, then bias-only."""
        columns = feature_columns(self.cfg["data"])
        return list(columns.hashed) + list(columns.bias_only)

    @property
    def device(self) -> torch.device:
        return resolve_device(str(self.cfg["device"]))

    def new_model(self) -> MultiTaskModel:
        """The initial model; seeded, so every mode starts from the same weights."""
        torch.manual_seed(int(self.cfg["seed"]))
        model_cfg = {**self.cfg["model"], "id_dropout": self.id_dropout}
        model = build_model(model_cfg, feature_spec(self.cfg["data"], self.plan.feature_stats), self.task_names)
        model.init_priors({t.name: t.base_rate for t in self.tasks if t.base_rate is not None})
        return model

    @property
    def calibrates(self) -> bool:
        """`calibrate`, except under differential privacy: (a, b) fitted on the validation rows' exact
        sums would be part of the released model without the noise its (epsilon, delta) accounts for."""
        return bool(self.cfg.get("calibrate", False)) and \
            str(self.cfg.get("privacy", {}).get("mode", "none")) not in ("dp", "ldp")

    def finish(self, state: Mapping[str, torch.Tensor], validations: Mapping[int, Mapping[str, Metrics]],
               kept_round: int, measure: Callable[[dict[str, torch.Tensor]], Mapping[str, Metrics]]
               ) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, tuple[float, float]]]:
        """The kept joint state (model and loss weighting) finished on validation, the same in every
        mode: (state, the heads that now predict their prior with their validation loss over the
        prior's (tasks/selection.py behind_prior), the others' recalibrations a z + b under
        `calibrate` (tasks/calibration.py)). `validations`: round -> validation metrics, round 0
        included; `measure(state)`: the validation metrics of a state, with moments. Under `last`
        the state is kept as it is."""
        rule = str(self.cfg["select_round"])
        prior_heads = behind_prior(validations, kept_round, rule, self.tasks)
        with torch.random.fork_rng(devices=[]):  # new_model seeds torch; the caller's draws go on as they were
            model, weighting = self.new_model(), self.new_weighting()
        base_rates = {t.name: t.base_rate for t in self.tasks if t.base_rate is not None}

        def finished(calibration: Mapping[str, tuple[float, float]]) -> dict[str, torch.Tensor]:
            load_joint_state(model, weighting, state)
            model.reset_to_prior(list(prior_heads), base_rates)
            for task, (a, b) in calibration.items():
                model.recalibrate(task, a, b)
            return joint_state(model, weighting)

        calibration: dict[str, tuple[float, float]] = {}
        if self.calibrates and rule == "best_val" and kept_round in validations:
            tasks = [t for t in self.tasks if t.name in model.calibratable_tasks()]
            calibration = fit_calibration(validations[kept_round], tasks, lambda c: measure(finished(c)),
                                          skip=list(prior_heads))
        if not prior_heads and not calibration:
            return dict(state), prior_heads, calibration
        return finished(calibration), prior_heads, calibration

    @property
    def bias_refit_steps(self) -> int:
        return bias_refit_steps(self.cfg)

    @property
    def embedding_refit_steps(self) -> int:
        return embedding_refit_steps(self.cfg)

    def refit(self, state: Mapping[str, torch.Tensor], held: Collection[str],
              statistics: Callable[[dict[str, torch.Tensor], str], WideStats]
              ) -> tuple[dict[str, torch.Tensor], int, int]:
        """The finished state refitted on the train and validation rows: refit_biases, then
        refit_embeddings. `statistics(state, part)`: the summed statistics of `part` (protocol.REFIT_BIAS
        or REFIT_EMBEDDING) at a state. Returns the state and each part's steps taken."""
        state, bias_steps = self.refit_biases(state, held, lambda s: statistics(s, protocol.REFIT_BIAS))
        state, embedding_steps = self.refit_embeddings(state, lambda s: statistics(s, protocol.REFIT_EMBEDDING))
        return state, bias_steps, embedding_steps

    def refit_biases(self, state: Mapping[str, torch.Tensor], held: Collection[str],
                     statistics: Callable[[dict[str, torch.Tensor]], WideStats]
                     ) -> tuple[dict[str, torch.Tensor], int]:
        """The finished state with its per-id biases refitted on every labelled row, the validation
        split's included (an item first seen there gets its bias), by `bias_refit_steps` Newton steps;
        the deep part, the global biases (calibration's level) and the `held` tasks (heads that
        predict their prior) keep their values, the same in every mode. The validation rows are each
        merchant's latest: on synthetic_events a quarter of the test rows' users and items first
        appear there. `statistics(state)`: the summed refit statistics at `state` of the rows
        the model is for (tasks/wide.py refit_statistics; federated, every node's summed). Returns the
        state and the steps taken."""
        refitted = {t.name for t in self.tasks if t.name not in held}
        settings = newton_settings(self.cfg["train"], self.tasks)

        def refit_stats(candidate: dict[str, torch.Tensor]) -> WideStats:
            return {name: value for name, value in statistics(candidate).items()
                    if not name.startswith(GLOBAL_BIAS) and name.split(".")[2] in refitted}
        return _newton_steps(state, self.bias_refit_steps if refitted else 0, refit_stats,
                             lambda params, stats: newton_update(params, stats, *settings))

    def refit_embeddings(self, state: Mapping[str, torch.Tensor],
                         statistics: Callable[[dict[str, torch.Tensor]], WideStats]
                         ) -> tuple[dict[str, torch.Tensor], int]:
        """After refit_biases: the embedding rows take `embedding_refit_steps` Newton steps on the same
        rows (a row first seen in validation gets its vector; tasks/embedding_newton.py), everything
        else as it is, under a prior of refit_prior_scale x train.embedding_l2. A held head predicts its
        prior, so it adds nothing to the sums. `statistics`: the summed embedding statistics at a state
        (refit_embedding_statistics; federated, every node's). Returns the state and the steps taken."""
        prior, damping = embedding_newton_settings(self.cfg["train"])
        prior *= refit_prior_scale(self.tasks)
        return _newton_steps(state, self.embedding_refit_steps, statistics,
                             lambda params, stats: embedding_newton_update(params, stats, prior, damping))

    @property
    def id_dropout(self) -> float | list[float]:
        """model.id_dropout resolved against the plan's cold shares: the same on every node and in every mode."""
        hashed = feature_columns(self.cfg["data"]).hashed
        return id_dropout_rates(self.cfg["model"].get("id_dropout", 0.0), self.plan.cold_shares, hashed)

    def id_dropout_note(self) -> str:
        """For the log: the id dropout this run trains with, and the cold shares auto read."""
        rates, hashed = self.id_dropout, feature_columns(self.cfg["data"]).hashed
        shown = ", ".join(f"{c} {r:g}" for c, r in zip(hashed, rates)) if isinstance(rates, list) else f"{rates:g}"
        shares = ", ".join(f"{c} {100 * s:.0f} %" for c, s in sorted(self.plan.cold_shares.items()))
        setting = self.cfg["model"].get("id_dropout", 0.0)
        return f"model.id_dropout={setting}: {shown} (cold validation rows: {shares or 'no validation split'})"

    def new_weighting(self) -> LossWeighting:
        return build_weighting(self.cfg["loss"], self.task_names)

    def shard(self, merchant_id: str, split: str) -> Shard:
        if self.index is None:
            raise RuntimeError("this experiment holds no data: only the baselines read every merchant's")
        return self.index.merchant(merchant_id).shard(split)


# train.<key>=auto: (value for a run with no rating task, value for one with). Without a dense rating
# gradient the federated deep part learns from the merchants' one-epoch updates only slowly: on
# synthetic_60k's and synthetic_sparse's rows without ratings a merchant's kept Adagrad state and
# the rounds' average took federated purchase AUC from 0.6931 to 0.7040 and 0.6337 to 0.6651; with a
# rating task they cost on every preset (seed 0; README, "Tables unlike the presets"). The same holds
# for training the deep part from round 1 (wide_rounds 0): without ratings it lifted federated purchase
# AUC on synthetic_events (0.6012 -> 0.6230), synthetic_60k's rows (0.7150 -> 0.7220) and
# synthetic_sparse's (3 seeds each), with ratings it lost on every preset (seed 0).
# train.keep_optimizer_state=auto is false only where a rating task trains beside binary ones, so true
# also where every task is a rating: what the kept state cost
# with ratings was the binary heads' AUC beside them (synthetic_sparse), while alone the federated
# rating deep part stalls at the bias model without it (a movie-like log of 21 merchants: RMSE 1.0006
# against MF's 0.9964; kept: 0.9963; synthetic_60k's ratings alone 1.0424 -> 1.0335, MF 1.0357; seed 0,
# README, "Tables unlike the presets").
# train.embedding_newton=auto: on wherever per-row statistics are sent at all (first_order_fit=newton),
# no id is dropped in training (model.id_dropout resolved to 0) and a validation split keeps the best
# round. The step fits each row to its rows as if its id were always there, which id dropout trains
# the model not to lean on (synthetic_coldstart and synthetic_events lost with it); it reaches the
# best round 2-3x sooner and then overfits, so 10 rounds played to the last (the synthetic default,
# no validation split) end past the peak (purchase AUC 0.772 against 0.799). Elsewhere it won on
# every preset and table measured (README; tasks/embedding_newton.py).
AUTO_BY_RATING_TASK = {"average_decay": (0.5, 0.0), "wide_rounds": (0, 1)}


AUTO_SETTINGS = (*AUTO_BY_RATING_TASK, "keep_optimizer_state", "embedding_newton")


def check_auto_settings(train_cfg: Mapping[str, Any]) -> None:
    """A `train` setting that may be `auto` holds either that or a value: any other text (a typo of
    auto) would otherwise fail deep in training, or pass as a true flag."""
    for key in AUTO_SETTINGS:
        value = train_cfg.get(key)
        if isinstance(value, str) and value != "auto":
            raise InputError(f"train.{key}={value!r}: give auto or a value")
    priors = train_cfg.get("bias_l2", 0.0)
    for task, value in (priors.items() if isinstance(priors, Mapping) else [("default", priors)]):
        bias_prior_value(value, "its default" if task == "default" else f"task {task!r}")


def resolved_training(train_cfg: Mapping[str, Any], tasks: list[Task], drops_ids: bool = False,
                      keeps_best_round: bool = True) -> dict[str, Any]:
    """`train` with its `auto` settings decided by the run's tasks, whether it drops ids in training
    (model.id_dropout) and whether a validation split keeps its best round: the same on every side,
    since every side knows the plan and the config."""
    check_auto_settings(train_cfg)
    with_rating = any(t.kind != "binary" for t in tasks)
    resolved = dict(train_cfg)
    for key, (without, with_) in AUTO_BY_RATING_TASK.items():
        if str(resolved.get(key)) == "auto":
            resolved[key] = with_ if with_rating else without
    if str(resolved.get("keep_optimizer_state")) == "auto":
        resolved["keep_optimizer_state"] = not (with_rating and any(t.kind == "binary" for t in tasks))
    if str(resolved.get("embedding_newton", False)) == "auto":
        resolved["embedding_newton"] = not drops_ids and keeps_best_round and newton_fit(resolved)
    return resolved


def _newton_steps(state: Mapping[str, torch.Tensor], steps: int,
                  statistics: Callable[[dict[str, torch.Tensor]], WideStats],
                  update: Callable[[dict[str, np.ndarray], WideStats], dict[str, np.ndarray]]
                  ) -> tuple[dict[str, torch.Tensor], int]:
    """Up to `steps` times: the statistics at the state, and the parameters they cover updated from
    them; stops early where there are none (no node answered). Returns the state and the steps taken."""
    state, taken = dict(state), 0
    for _ in range(steps):
        stats = statistics(state)
        if not stats:
            break
        params = {name: state[name].cpu().numpy() for name in stats}
        for name, value in update(params, stats).items():
            state[name] = torch.as_tensor(value, dtype=state[name].dtype)
        taken += 1
    return state, taken


def refits(cfg: Mapping[str, Any]) -> bool:
    """Whether the kept model may be refitted on the train and validation rows at all: a validation
    split chose the round (`select_round` resolved to best_val) and per-row sums are sent (the
    parameters are Newton-fitted: not under the privacy options)."""
    return str(cfg["select_round"]) == "best_val" and newton_fit(cfg["train"])


def embedding_refit_steps(cfg: Mapping[str, Any]) -> int:
    """`refit_embeddings` resolved: Newton steps of the kept model's embedding rows on the train and
    validation rows, after the bias refit, where the model may be refitted (`refits`); auto or true =
    EMBEDDING_REFIT_STEPS (tasks/embedding_newton.py)."""
    return refit_steps(cfg.get("refit_embeddings", False), "refit_embeddings", EMBEDDING_REFIT_STEPS) \
        if refits(cfg) else 0


def bias_refit_steps(cfg: Mapping[str, Any]) -> int:
    """`refit_biases` resolved: Newton steps of the kept model's per-id biases on the train and
    validation rows together where the model may be refitted (`refits`), else 0. The benchmark's
    references refit on the same rows where this is not 0."""
    return refit_steps(cfg.get("refit_biases", False)) if refits(cfg) else 0


def experiment_for(cfg: Mapping[str, Any], plan: RunPlan, index: MerchantIndex | None = None) -> Experiment:
    """The experiment of a fixed plan: the same tasks, scales, model and training settings on every side."""
    personalization_of(cfg)  # checked once, before any training
    labels = [TASKS[name].label for name in plan.tasks if name in TASKS]
    tasks = resolve_tasks(plan.tasks, labels, label_stats=plan.label_stats)
    experiment = Experiment(cfg=cfg, plan=plan, tasks=tasks, index=index)
    drops_ids = any(rate > 0 for rate in np.atleast_1d(experiment.id_dropout))
    keeps_best = split_fractions(cfg["data"])[1] > 0 and str(cfg.get("select_round")) != "last"
    experiment.cfg = {**cfg, "train": resolved_training(cfg["train"], tasks, drops_ids, keeps_best)}
    return experiment


def prepare_every_merchant(data_cfg: Mapping[str, Any]) -> MerchantIndex:
    """The pooled table split per merchant, and each merchant's file prepared as its own node would."""
    partitions = read_manifest(partition_table(data_cfg))
    return MerchantIndex([prepare_merchant(p.path, data_cfg, p.merchant_id) for p in partitions])


def open_experiment(cfg: Mapping[str, Any], prepare: bool = True) -> Experiment:
    """Every merchant's data and the plan a federation of all of them would fix (baselines, benchmarks).

    `prepare` is kept for callers: preparing is cached per merchant file, so it always happens.
    A merchant without labels for any task of the run still takes part: it trains nothing.
    """
    del prepare
    index = prepare_every_merchant(cfg["data"])
    plan = plan_from_summaries(cfg.get("tasks"), [m.summary for m in index.merchants])
    return experiment_for(cfg, plan, index)
