"""The training and evaluation loop, shared by federated clients and the centralized/local baselines,
so every mode trains and scores the same way."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from core.errors import InputError, TrainingDiverged
from data.shards import Shard
from tasks.metrics import Metrics
from tasks.models import MultiTaskModel
from tasks.registry import Task
from tasks.weighting import LossWeighting


FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class TrainReport:
    examples: int                 # rows with a label of at least one task: the client's FedAvg weight
    label_counts: dict[str, int]  # rows with a label, per task
    losses: dict[str, float]      # mean task loss over the last epoch


def task_labels(shard: Shard, tasks: Sequence[Task]) -> dict[str, np.ndarray]:
    """Label vector per task; all-NaN where the shard lacks the column (no label on any row)."""
    n = len(shard)
    return {t.name: shard.labels.get(t.label, np.full(n, np.nan, np.float32)) for t in tasks}


def labelled_rows(shard: Shard, tasks: Sequence[Task]) -> np.ndarray:
    """Rows with a label of at least one task: the only rows that produce a gradient."""
    return np.isfinite(np.stack(list(task_labels(shard, tasks).values()))).any(axis=0)


def label_counts(shard: Shard, tasks: Sequence[Task]) -> dict[str, int]:
    return {name: int(np.isfinite(y).sum()) for name, y in task_labels(shard, tasks).items()}


def inverse_row_counts(shard: Shard, tasks: Sequence[Task], buckets: Sequence[int], device: torch.device,
                       totals: Mapping[int, np.ndarray] | None = None) -> list[torch.Tensor]:
    """Per feature, 1 / how often each row occurs among the labelled rows (0 where the shard has none):
    the weights that make per-lookup L2 a per-row prior of the same strength for every row.

    `totals` (feature -> labelled rows per row id over every merchant, RowTotals) makes a merchant
    apply only its share of a row's prior (its count / the total), so the merchants' objectives add
    up to the pooled one. Counted on the shard alone, an item that ten merchants share would be
    shrunk with the full prior by each of them: ten times the pooled prior once averaged, which
    kept the embeddings at zero for rounds on sparse data.
    """
    rows = shard.features[labelled_rows(shard, tasks)]
    out = []
    for j, n in enumerate(buckets):
        counts = np.bincount(rows[:, j], minlength=n).astype(np.float32)
        seen = counts > 0
        if totals is not None and j in totals:
            counts = np.maximum(counts, np.asarray(totals[j], np.float32)[:n])
        out.append(torch.as_tensor(np.divide(1.0, counts, out=np.zeros_like(counts), where=seen), device=device))
    return out


def trained_rows(shard: Shard, tasks: Sequence[Task], tables: Mapping[str, tuple[int, str | None]]
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per id-indexed table, the rows this shard's training looks up and how often: (ids, counts).

    A task's table counts only rows with that task's label (only those give it a gradient); a shared
    table counts every row with any label.
    """
    labels = task_labels(shard, tasks)
    any_label = labelled_rows(shard, tasks)
    out = {}
    for name, (column, task) in tables.items():
        mask = any_label if task is None else np.isfinite(labels[task]) if task in labels else np.zeros(len(shard), bool)
        out[name] = np.unique(shard.features[mask, column], return_counts=True)
    return out


def masked_task_losses(outputs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
                       tasks: Sequence[Task]) -> dict[str, torch.Tensor]:
    """Each task's loss over the rows that carry its label; tasks with no label in the batch are absent."""
    losses = {}
    for task in tasks:
        y = labels[task.name]
        mask = ~torch.isnan(y)
        if bool(mask.any()):
            losses[task.name] = task.loss(outputs[task.name][mask], y[mask])
    return losses


def newton_fit(train_cfg: Mapping[str, Any]) -> bool:
    """Whether the first-order biases are fitted by Newton steps (tasks/wide.py) rather than by SGD."""
    fit = str(train_cfg.get("first_order_fit", "sgd"))
    if fit not in ("sgd", "newton"):
        raise InputError(f"train.first_order_fit must be sgd or newton, got {fit!r}")
    return fit == "newton"


# The prior, in rows, that `bias_l2: auto` stands for where no per-row sums exist to estimate it from
# (first_order_fit=sgd, as under privacy=dp|ldp; a merchant's bias-only rows, solved on its own node):
# the fixed default before the estimate (tasks/shrinkage.py) replaced it.
BIAS_L2_WITHOUT_SUMS = 10.0


def bias_priors(train_cfg: Mapping[str, Any], tasks: Sequence[str], auto_as: float | None = None
                ) -> dict[str, float | None]:
    """Each task's prior (in rows) on its per-id biases: `train.bias_l2` is one value for every task,
    or a mapping {task: value} (tasks it leaves out take its `default`), since the tasks want different
    strengths. A value is a number or `auto`: estimated from the data at every Newton step
    (tasks/shrinkage.py), returned as None, or as `auto_as` by callers that have no sums to estimate from."""
    given = train_cfg.get("bias_l2", 0.0)
    given = dict(given) if isinstance(given, Mapping) else {"default": given}
    out: dict[str, float | None] = {}
    for task in tasks:
        value = given.get(task, given.get("default"))
        if value is None:
            raise InputError(f"train.bias_l2 names no prior for task {task!r} and has no default")
        prior = bias_prior_value(value, f"task {task!r}")
        out[task] = auto_as if prior is None else prior
    return out


def bias_prior_value(value: Any, where: str) -> float | None:
    """One value of `train.bias_l2` (`where`: what it is for, in the error): a number >= 0, or None for auto."""
    if str(value) == "auto":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number >= 0:
        raise InputError(f"train.bias_l2 must be auto or a number >= 0, got {value!r} for {where}")
    return number


def sgd_bias_tasks(model: MultiTaskModel, train_cfg: Mapping[str, Any]) -> list[str]:
    """Tasks whose first-order biases this loop trains: all of them under sgd; under newton only those
    a Newton step cannot fit (ESMM's factorised purchase head)."""
    if model.first_order is None:
        return []
    newton = set(model.additive_tasks()) if newton_fit(train_cfg) else set()
    return [t for t in model.task_names if t not in newton]


def optimized_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """Every parameter the optimizer steps, in its groups' order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def make_optimizer(model: MultiTaskModel, weighting: LossWeighting, train_cfg: Mapping[str, Any],
                   only: Sequence[torch.nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """One optimizer; the first-order (wide) part gets its own learning rate, `train.first_order_lr`:
    per-id biases need many passes to converge while the deep part overfits within a few. `only`:
    these parameters alone, at `lr` (personalization=local_heads trains the heads)."""
    if only is not None:  # a subset trained alone, at one rate
        params = [{"params": list(only)}]
    else:
        first_order = {id(p) for p in model.first_order.parameters()} if model.first_order is not None else set()
        deep = [p for p in model.parameters() if id(p) not in first_order] + list(weighting.parameters())
        wide = [p for t in sgd_bias_tasks(model, train_cfg) for p in model.first_order_parameters(t)]
        first_order_lr = train_cfg.get("first_order_lr")
        params = [{"params": deep}]
        if wide:
            params.append({"params": wide, "lr": float(first_order_lr or train_cfg["lr"])})
    for key in ("lr", "first_order_lr"):
        value = train_cfg.get(key)
        if value is not None and not 0 < float(value) <= FLOAT32_MAX:
            raise InputError(f"train.{key} must be a positive number a float32 can hold, got {float(value):g}")
    name = str(train_cfg["optimizer"]).lower()
    kwargs = {"lr": float(train_cfg["lr"]), "weight_decay": float(train_cfg.get("weight_decay", 0.0))}
    if name == "adam":
        return torch.optim.Adam(params, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if name == "adagrad":
        return torch.optim.Adagrad(params, **kwargs)
    if name == "sgd":
        return torch.optim.SGD(params, momentum=float(train_cfg.get("momentum", 0.0)), **kwargs)
    raise InputError(f"unknown train.optimizer {name!r} (known: adam, adamw, adagrad, sgd)")


def proximal_mu(strategy_cfg: Mapping[str, Any] | None) -> float:
    """FedProx's mu (strategy=fedprox), else 0: the weight of mu/2 ||w - w_global||^2 in a client's loss."""
    if not strategy_cfg or strategy_cfg.get("name") != "fedprox":
        return 0.0
    mu = float(strategy_cfg["proximal_mu"])
    if not mu >= 0:
        raise InputError(f"strategy.proximal_mu must be >= 0, got {strategy_cfg['proximal_mu']!r}")
    return mu


class ProximalTerm:
    """FedProx: the gradient mu (w - w_global) of mu/2 ||w - w_global||^2, added after each batch's backward
    to every parameter the optimizer trains, w_global being the parameters as the round began.

    Id-indexed tables get it only on the rows the batch looks up, lazily like their data gradient:
    applied every batch to rows the batch does not use, Adagrad's per-coordinate scaling turns even a
    tiny mu into full-size steps back to the global value (measured: the default data's purchase AUC
    stalled at 0.72 from round 3 with mu = 0.01), and a row seen in one batch of many never learns.
    """

    def __init__(self, model: MultiTaskModel, optimizer: torch.optim.Optimizer, mu: float) -> None:
        self.mu = mu
        self.parameters = optimized_parameters(optimizer)
        self.anchors = [p.detach().clone() for p in self.parameters]
        named = dict(model.named_parameters())
        self.columns = {id(named[name]): column for name, (column, _) in model.id_tables().items() if name in named}

    def add_gradient(self, batch_features: torch.Tensor) -> None:
        for parameter, anchor in zip(self.parameters, self.anchors):
            proximal = self.mu * (parameter.detach() - anchor)
            column = self.columns.get(id(parameter))
            if column is not None:
                looked_up = torch.zeros(len(parameter), dtype=proximal.dtype, device=proximal.device)
                looked_up[batch_features[:, column]] = 1.0
                proximal = proximal * looked_up.view(-1, *([1] * (parameter.dim() - 1)))
            parameter.grad = proximal if parameter.grad is None else parameter.grad + proximal


def shuffle_seed(seed: int, server_round: int, merchant_index: int) -> int:
    """Batch order of one merchant in one round: reproducible, and different across rounds and merchants."""
    return seed * 1_000_003 + server_round * 7_919 + merchant_index


def sparse_gradients_apply(optimizer: torch.optim.Optimizer, weighting: LossWeighting, proximal: float) -> bool:
    """Whether the id tables can train on sparse gradients with the very same result: Adagrad without
    weight decay (torch's sparse Adagrad leaves a row nobody looked up exactly as the dense update
    with its zero gradient does), no weighting that handles the shared gradients itself, no FedProx
    term (it adds a dense one)."""
    return (isinstance(optimizer, torch.optim.Adagrad) and not weighting.reads_gradients and not proximal
            and all(float(group["weight_decay"]) == 0 for group in optimizer.param_groups))


@contextmanager
def sparse_table_gradients(model: MultiTaskModel, enabled: bool) -> Iterator[None]:
    """Within the block the id tables get sparse gradients: a step then costs the rows a batch looks
    up, not the whole table (262,144 rows a table on data=table: 3x the step time with dense ones)."""
    model.embedding.sparse_gradients = enabled
    try:
        with warnings.catch_warnings():
            # torch's sparse Adagrad builds its updates from a coalesced gradient; the invariant check
            # it says it skips would only re-verify that
            warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
            yield
    finally:
        model.embedding.sparse_gradients = False


@contextmanager
def only_trained_parameters(model: MultiTaskModel, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Within the block autograd skips the model's parameters the optimizer does not train (the
    Newton-fitted biases, tasks/wide.py): their gradients were computed every batch and never used."""
    trained = {id(p) for p in optimized_parameters(optimizer)}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in trained]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


def train_epochs(model: MultiTaskModel, weighting: LossWeighting, optimizer: torch.optim.Optimizer,
                 shard: Shard, tasks: Sequence[Task], train_cfg: Mapping[str, Any], seed: int,
                 device: torch.device, proximal: float = 0.0, row_totals: Mapping[int, np.ndarray] | None = None
                 ) -> TrainReport:
    """`train_cfg.local_epochs` passes over the shard in seeded random batches; `proximal` > 0 adds
    FedProx's term towards the parameters as they were on entry (the round's global model);
    `row_totals` share each row's prior among the merchants (inverse_row_counts)."""
    epochs, batch_size = int(train_cfg["local_epochs"]), int(train_cfg["batch_size"])
    embedding_l2 = float(train_cfg.get("embedding_l2", 0.0))
    model.train()
    torch.manual_seed(seed)  # dropout masks: reproducible, and different per round and merchant
    features = torch.as_tensor(shard.features, device=device)
    labels = {k: torch.as_tensor(v, device=device) for k, v in task_labels(shard, tasks).items()}
    generator = torch.Generator().manual_seed(seed)
    row_weights = inverse_row_counts(shard, tasks, [t.num_embeddings for t in model.embedding.tables], device,
                                     row_totals)
    bias_tasks = sgd_bias_tasks(model, train_cfg)  # Newton-fitted biases take their prior in tasks/wide.py
    priors = set(bias_priors(train_cfg, bias_tasks, auto_as=BIAS_L2_WITHOUT_SUMS).values())
    if len(priors) > 1:
        raise InputError("a per-task train.bias_l2 needs train.first_order_fit=newton (under sgd one prior "
                         f"serves the biases of {', '.join(bias_tasks)})")
    bias_l2 = priors.pop() if priors else 0.0
    shared = model.shared_parameters()
    proximal_term = ProximalTerm(model, optimizer, proximal) if proximal else None
    n = len(shard)
    sums: dict[str, float] = {}
    batches: dict[str, int] = {}
    sparse = sparse_gradients_apply(optimizer, weighting, proximal)
    with only_trained_parameters(model, optimizer), sparse_table_gradients(model, sparse):
        for _ in range(epochs):
            sums, batches = {}, {}
            for idx in torch.randperm(n, generator=generator).split(batch_size):
                idx = idx.to(device)
                outputs = model(features[idx])
                losses = masked_task_losses(outputs, {k: v[idx] for k, v in labels.items()}, tasks)
                if not losses:
                    continue
                optimizer.zero_grad(set_to_none=True)
                penalty = None
                if embedding_l2 > 0 or (bias_l2 > 0 and bias_tasks):
                    embedding_penalty, bias_penalty = model.lookup_l2(features[idx], row_weights, bias_tasks)
                    penalty = embedding_l2 * embedding_penalty + bias_l2 * bias_penalty
                weighting.backward(losses, shared, penalty)
                if proximal_term is not None:
                    proximal_term.add_gradient(features[idx])
                optimizer.step()
                for name, loss in losses.items():
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise TrainingDiverged.of(f"the {name} loss is {value}")
                    sums[name] = sums.get(name, 0.0) + value
                    batches[name] = batches.get(name, 0) + 1
    return TrainReport(examples=int(labelled_rows(shard, tasks).sum()), label_counts=label_counts(shard, tasks),
                       losses={k: sums[k] / batches[k] for k in sums})


@torch.no_grad()
def predict(model: MultiTaskModel, features: np.ndarray, tasks: Sequence[Task], device: torch.device,
            batch_size: int = 16384) -> dict[str, np.ndarray]:
    """Predictions in label space (probabilities, values) per task."""
    model.eval()
    x = torch.as_tensor(features, device=device)
    parts: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    for chunk in x.split(batch_size):
        outputs = model(chunk)
        for task in tasks:
            values = task.to_prediction(outputs[task.name]).float().cpu().numpy()
            if not np.isfinite(values).all():
                raise TrainingDiverged.of(f"the model's {task.name} predictions are not finite")
            parts[task.name].append(values)
    return {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in parts.items()}


def score(predictions: Mapping[str, np.ndarray], shard: Shard, tasks: Sequence[Task]
          ) -> tuple[dict[str, Metrics], dict[str, int]]:
    """Per-task metrics over the rows that carry the task's label, and those row counts."""
    metrics, counts = {}, {}
    for task, y in zip(tasks, task_labels(shard, tasks).values()):
        mask = np.isfinite(y)
        counts[task.name] = int(mask.sum())
        if counts[task.name]:
            metrics[task.name] = task.metrics_fn(y[mask], predictions[task.name][mask])
    return metrics, counts


def evaluate(model: MultiTaskModel, shard: Shard, tasks: Sequence[Task], device: torch.device
             ) -> tuple[dict[str, Metrics], dict[str, int]]:
    return score(predict(model, shard.features, tasks, device), shard, tasks)


def oracle_score(shard: Shard, tasks: Sequence[Task]) -> tuple[dict[str, Metrics], dict[str, int]]:
    """What the generator's ground truth scores: the best any model could reach on this split."""
    known = [t for t in tasks if t.label in shard.oracle]
    return score({t.name: shard.oracle[t.label] for t in known}, shard, known)
