"""Building blocks every architecture shares, and the rule that tells task parameters from shared ones.

A parameter belongs to task `t` when it sits under a `PerTask` container's key `t`; every other
parameter is shared. The server's multi-task FedAvg reads that rule through `parameter_tasks`, so a
new architecture only has to keep its task-specific modules in `PerTask` containers.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from core.errors import InputError
from data.features import FeatureSpec, unpack_numerical


class PerTask(nn.ModuleDict):
    """One module per task; the parameters below key `t` are averaged over clients holding `t` labels."""


class PerTaskParameters(nn.ParameterDict):
    """One parameter per task (e.g. a learned loss weight), owned by that task like a `PerTask` module."""


def mlp(in_dim: int, dims: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in dims:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


class FeatureEmbedding(nn.Module):
    """One hashed embedding table per categorical feature; output = the embeddings concatenated with
    their pairwise dot products (DLRM-style), since an MLP alone learns user x item affinity poorly.

    Rows start at `init_std` (default 0): a row no training example touches stays exactly zero, so an
    id never seen in training (a cold user or item) contributes nothing instead of random noise, and
    the first gradient step still moves a row through the MLP above it.

    Numerical columns (data/features.py; the input's last columns) are standardised here with the run
    plan's pooled mean and std, kept as buffers so a saved model carries its own scaling; value z
    becomes z times a learned vector of its column, an empty cell that column's learned "missing"
    vector, so numericals join the pairwise dot products like any id.
    """

    def __init__(self, features: FeatureSpec | Sequence[int], dim: int, init_std: float = 0.0,
                 id_dropout: float | Sequence[float] = 0.0) -> None:
        super().__init__()
        spec = FeatureSpec.of(features)
        rates = [id_dropout] * len(spec.buckets) if isinstance(id_dropout, (int, float)) else list(id_dropout)
        if len(rates) != len(spec.buckets) or not all(0.0 <= r < 1.0 for r in rates):
            raise InputError(f"model.id_dropout must be auto or lie in [0, 1) (one value per hashed column, "
                             f"{len(spec.buckets)}), got {id_dropout}")
        # a plain attribute, not a buffer: it stays out of the state dict the server aggregates
        self.id_dropout = torch.tensor(rates, dtype=torch.float32)
        self.drops_ids = any(r > 0 for r in rates)
        self.sparse_gradients = False  # set by the trainer (tasks/training.py sparse_table_gradients)
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n in spec.buckets)
        self.n_numerical = spec.n_numerical
        if self.n_numerical:
            self.register_buffer("numerical_mean", torch.tensor(spec.numerical_mean, dtype=torch.float32))
            self.register_buffer("numerical_std", torch.tensor(spec.numerical_std, dtype=torch.float32))
            self.numerical = nn.Parameter(torch.empty(self.n_numerical, dim))
            self.numerical_missing = nn.Parameter(torch.empty(self.n_numerical, dim))
        for weight in [table.weight for table in self.tables] + ([self.numerical, self.numerical_missing]
                                                                 if self.n_numerical else []):
            nn.init.normal_(weight, std=init_std) if init_std > 0 else nn.init.zeros_(weight)
        n = len(spec.buckets) + self.n_numerical
        self.pairs = torch.triu_indices(n, n, offset=1)
        self.output_dim = dim * n + self.pairs.shape[1]

    def lookups(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Each hashed column's rows; with `sparse_gradients` their gradient is a sparse tensor of the
        rows looked up, not a dense one the size of the table."""
        return [nn.functional.embedding(features[:, j], table.weight, sparse=self.sparse_gradients)
                for j, table in enumerate(self.tables)]

    def numerical_vectors(self, features: torch.Tensor) -> torch.Tensor:
        """[B, n_numerical, dim]: standardised value x its column's vector, or the "missing" vector."""
        raw = unpack_numerical(features[:, len(self.tables):len(self.tables) + self.n_numerical])
        missing = torch.isnan(raw).unsqueeze(-1)
        z = torch.nan_to_num((raw - self.numerical_mean) / self.numerical_std, nan=0.0).unsqueeze(-1)
        return torch.where(missing, self.numerical_missing, z * self.numerical)

    def vectors(self, features: torch.Tensor) -> torch.Tensor:
        """[B, fields, dim]: every hashed column's row, then every numerical column's vector.

        In training, each hashed lookup is replaced by the zero vector with probability id_dropout:
        zero is what an id never seen in training looks like, so the layers above learn to predict
        from the other columns when an id is unknown (DropoutNet, Volkovs et al. 2017), instead of
        meeting that input for the first time on a cold test row."""
        vectors = torch.stack(self.lookups(features), dim=1)
        if self.training and self.drops_ids:
            vectors = self.drop_ids(vectors)
        if self.n_numerical:
            vectors = torch.cat([vectors, self.numerical_vectors(features)], dim=1)
        return vectors

    def drop_ids(self, vectors: torch.Tensor) -> torch.Tensor:
        """[B, hashed columns, dim] with each row of column j zeroed with probability id_dropout[j]."""
        keep = torch.rand(vectors.shape[:2], device=vectors.device) >= self.id_dropout.to(vectors.device)
        return vectors * keep.unsqueeze(-1)

    def combine(self, vectors: torch.Tensor) -> torch.Tensor:
        """[B, fields, dim] -> the deep part's input: the vectors concatenated with their pairwise dots."""
        dots = torch.einsum("bid,bjd->bij", vectors, vectors)[:, self.pairs[0], self.pairs[1]]
        return torch.cat([vectors.flatten(1), dots], dim=1)


# model.id_dropout=auto: a hashed column whose value is cold on at least COLD_SHARE_FOR_ID_DROPOUT of
# the validation rows is dropped in training that often (at most MAX_AUTO_ID_DROPOUT), others not at
# all. Measured (README, Multi-task learning): synthetic_coldstart (39 % of validation users and 31 % of
# items cold; 79 % and 76 % of test rows) gains from it, synthetic_sparse (8 %) and synthetic_60k (5 %)
# lose from 0.1-0.2. The validation window is shorter than the test window, so its share is the low end.
COLD_SHARE_FOR_ID_DROPOUT = 0.2
MAX_AUTO_ID_DROPOUT = 0.5


def id_dropout_rates(setting: Any, cold_shares: Mapping[str, float], hashed: Sequence[str]) -> float | list[float]:
    """model.id_dropout resolved: a number as given (every hashed column); auto = per column, the share
    of validation rows whose value is cold (the run plan's, pooled over merchants), 0 where that share
    is small or there is no validation split."""
    if str(setting) != "auto":
        try:
            return float(setting)
        except (TypeError, ValueError):
            raise InputError(f"model.id_dropout must be auto or a number in [0, 1), got {setting!r}") from None
    shares = [cold_shares.get(c, 0.0) for c in hashed]
    rates = [round(min(s, MAX_AUTO_ID_DROPOUT), 3) if s >= COLD_SHARE_FOR_ID_DROPOUT else 0.0 for s in shares]
    return rates if any(rates) else 0.0


class FirstOrder(nn.Module):
    """The wide part: per task, a global bias (starting at the task's prior) plus one learned bias per
    hashed id of every feature (user, item, ...) and of every bias-only feature (the merchant), all
    added to the head's output.

    Sparse logs are dominated by who and what (a user's propensity, an item's popularity); a deep part
    learns those slowly and overfits first. Biases start at zero, so a cold id adds nothing.
    `columns[j]`: the model input's column that indexes table j; the bias-only tables come last.
    """

    def __init__(self, features: FeatureSpec | Sequence[int], tasks: Sequence[str]) -> None:
        super().__init__()
        spec = FeatureSpec.of(features)
        self.n_embedded = len(spec.buckets)  # tables of the embedded columns; bias-only ones follow
        self.columns = list(range(self.n_embedded)) + spec.bias_columns
        self.tables = PerTask({t: nn.ModuleList(nn.Embedding(n, 1) for n in [*spec.buckets, *spec.bias_buckets])
                               for t in tasks})
        for tables in self.tables.values():
            for table in tables:
                nn.init.zeros_(table.weight)
        self.bias = PerTaskParameters({t: nn.Parameter(torch.zeros(())) for t in tasks})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: self.bias[t] + sum(table(features[:, c]).squeeze(-1) for c, table in zip(self.columns, tables))
                for t, tables in self.tables.items()}


class Interactions(nn.Module):
    """The second-order part: per task, sum over feature pairs of <w_t * e_a, e_b> on the shared
    embeddings (a factorisation machine whose pairwise term each task weighs per dimension).

    Matrix factorisation's user x item dot product is what an MLP learns worst (Rendle et al. 2020);
    here it reaches every head directly. Embeddings start at zero, so a cold id adds nothing here too.
    """

    def __init__(self, dim: int, tasks: Sequence[str]) -> None:
        super().__init__()
        self.weights = PerTaskParameters({t: nn.Parameter(torch.ones(dim)) for t in tasks})

    def forward(self, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """vectors [B, fields, dim] -> {task: [B]}; the pair sum by the FM identity, linear in fields."""
        pairs = 0.5 * (vectors.sum(1).pow(2) - vectors.pow(2).sum(1))
        return {t: pairs @ w for t, w in self.weights.items()}


class MultiTaskModel(nn.Module):
    """Base of every architecture: the same constructor arguments, so comparisons are fair.

    forward(features [B, n_features] int64) -> {task: head output [B]} (a logit or a value).
    `buckets` is a FeatureSpec (data/features.py) or, for hashed columns only, their bucket counts.
    """

    def __init__(self, buckets: FeatureSpec | Sequence[int], tasks: Sequence[str], embedding_dim: int = 16,
                 expert_dims: Sequence[int] = (128, 64), tower_dims: Sequence[int] = (32,),
                 dropout: float = 0.0, first_order: bool = True, embedding_init_std: float = 0.0,
                 interactions: bool = True, id_dropout: float | Sequence[float] = 0.0) -> None:
        super().__init__()
        self.task_names = list(tasks)
        self.embedding = FeatureEmbedding(buckets, embedding_dim, embedding_init_std, id_dropout)
        self.first_order = FirstOrder(buckets, tasks) if first_order else None
        self.interactions = Interactions(embedding_dim, tasks) if interactions else None

    def deep(self, embedded: torch.Tensor) -> dict[str, torch.Tensor]:
        """The architecture's own part, on the embedding layer's output: one raw output per task."""
        raise NotImplementedError

    def link(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw per-task outputs (deep + first order) -> heads; ESMM factorises purchase here."""
        return outputs

    def raw(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-task outputs before `link`: deep + pairwise interactions + first order."""
        # looked up once: the deep and pairwise parts see the same vectors
        return self.raw_from_vectors(features, self.embedding.vectors(features))

    def raw_from_vectors(self, features: torch.Tensor, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """`raw` from the looked-up vectors [B, fields, dim] (tasks/embedding_newton.py differentiates in them)."""
        outputs = self.deep(self.embedding.combine(vectors))
        if self.interactions is not None:
            pairwise = self.interactions(vectors)
            outputs = {t: outputs[t] + pairwise[t] for t in outputs}
        if self.first_order is not None:
            wide = self.first_order(features)
            outputs = {t: outputs[t] + wide[t] for t in outputs}
        return outputs

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.link(self.raw(features))

    def raw_priors(self, base_rates: Mapping[str, float]) -> dict[str, float]:
        """The raw output each binary task starts at so its head predicts its base rate."""
        return {t: math.log(p / (1 - p)) for t, p in base_rates.items() if t in self.task_names}

    @torch.no_grad()
    def init_priors(self, base_rates: Mapping[str, float], only: Sequence[str] | None = None) -> None:
        """Start binary heads (those in `only`, or all) at their train base rate: calibrated from round 0,
        and a cold row (nothing known about it) predicts the base rate instead of 0.5."""
        clipped = {t: min(max(float(p), 1e-4), 1 - 1e-4) for t, p in base_rates.items()}
        for task, logit in self.raw_priors(clipped).items():
            if only is not None and task not in only:
                continue
            if self.first_order is not None:
                self.first_order.bias[task].fill_(logit)
            else:
                self.output_bias(task).fill_(logit)

    @torch.no_grad()
    def reset_to_prior(self, tasks: Sequence[str], base_rates: Mapping[str, float]) -> None:
        """Make each of `tasks` predict its prior on every row again, as at round 0 (a rating's train
        mean; a binary task's base rate, from `base_rates`, which holds every binary task's): its own
        parts back to zero and its global bias to the prior; every other head predicts as before.
        ESMM's purchase head becomes pCTR x the prior purchase-given-click rate."""
        for task in tasks:
            self._affine_head(task, 0.0, 0.0)
        self.init_priors(base_rates, only=tasks)

    @torch.no_grad()
    def recalibrate(self, task: str, a: float, b: float) -> None:
        """The task's head output z becomes a z + b for every row (tasks/calibration.py); every other
        head predicts as before."""
        if task not in self.calibratable_tasks():
            raise ValueError(f"the {task} head of {type(self).__name__} cannot be recalibrated")
        self._affine_head(task, a, b)

    def _affine_head(self, task: str, a: float, b: float) -> None:
        """Every part of the task's raw output that is its own (tower output layer, pairwise weights,
        biases) scaled by a, then b added to its global bias: raw output z -> a z + b."""
        head = self.towers[task][-1]  # type: ignore[index]
        head.weight.mul_(a)
        head.bias.mul_(a)
        if self.interactions is not None:
            self.interactions.weights[task].mul_(a)
        if self.first_order is not None:
            for table in self.first_order.tables[task]:
                table.weight.mul_(a)
            self.first_order.bias[task].mul_(a).add_(b)
        else:
            head.bias.add_(b)

    def calibratable_tasks(self) -> list[str]:
        """Heads whose output is an affine function of their own parts (ESMM's click and purchase are not)."""
        return list(self.task_names)

    def output_bias(self, task: str) -> torch.Tensor:
        """The bias of the last layer of the task's tower (where a model without first order holds its prior)."""
        return self.towers[task][-1].bias  # type: ignore[index]

    def lookup_l2(self, features: torch.Tensor, row_weights: Sequence[torch.Tensor],
                  bias_tasks: Sequence[str] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, first-order) L2 of the rows this batch looks up: the batch mean of each row's
        squared norm times its weight in `row_weights[j]` (per feature j, indexed by row id); the
        first-order term covers the biases of `bias_tasks`.

        Only looked-up rows get a gradient, so every other row stays untouched (and a cold row zero).
        With weights 1 / (the row's count in the training data) the batches add up, over an epoch, to
        the same prior strength for every row whatever its frequency: a user seen twice is shrunk
        hard, an item seen a thousand times hardly at all (the bias model's and MF's regulariser).
        """
        weights = [w[features[:, j]] for j, w in enumerate(row_weights)]
        embedding = sum((w * v.pow(2).sum(1)).mean() for w, v in zip(weights, self.embedding.lookups(features)))
        bias = torch.zeros((), device=features.device)
        embedded = self.first_order.n_embedded if self.first_order is not None else 0
        for task in bias_tasks:  # the embedded columns' biases (a bias-only column, a merchant's, has many rows)
            bias = bias + sum((weights[j] * table(features[:, j]).squeeze(-1).pow(2)).mean()
                              for j, table in enumerate(self.first_order.tables[task][:embedded]))
        return embedding, bias

    def additive_tasks(self) -> list[str]:
        """Tasks whose head output is the deep output plus the first-order part, unchanged by `link`:
        the ones whose biases tasks/wide.py can fit by Newton steps."""
        return list(self.task_names) if self.first_order is not None else []

    def first_order_parameters(self, task: str) -> list[nn.Parameter]:
        """The task's global bias and every bias table of its columns: what first_order_fit=sgd trains.
        Under newton the bias-only tables among them are the trainer's to fit (tasks/wide.py)."""
        if self.first_order is None:
            return []
        return [*self.first_order.tables[task].parameters(), self.first_order.bias[task]]

    def bias_only_tables(self) -> dict[str, nn.Parameter]:
        """state_dict name -> table of every task's bias-only columns (a merchant's bias): the trainer
        fits them on its own rows (tasks/wide.py fit_bias_only) and sends them like any row table."""
        if self.first_order is None:
            return {}
        n = self.first_order.n_embedded
        return {f"first_order.tables.{t}.{j}.weight": tables[j].weight
                for t, tables in self.first_order.tables.items() for j in range(n, len(tables))}

    def id_tables(self) -> dict[str, tuple[int, str | None]]:
        """state_dict name of every id-indexed table -> (the feature column that indexes it, the
        owning task or None): what row-wise aggregation needs to know about a table."""
        tables: dict[str, tuple[int, str | None]] = {
            f"embedding.tables.{j}.weight": (j, None) for j in range(len(self.embedding.tables))}
        if self.first_order is not None:
            tables.update({f"first_order.tables.{t}.{j}.weight": (column, t)
                           for t, per_feature in self.first_order.tables.items()
                           for j, column in enumerate(self.first_order.columns)})
        return tables

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss reaches (what gradient-surgery weightings operate on)."""
        owners = parameter_tasks(self)
        return [p for name, p in self.named_parameters() if owners[name] is None]


def tower(in_dim: int, tower_dims: Sequence[int], dropout: float) -> nn.Sequential:
    """A task tower ending in one output unit, which starts at zero: an untrained model predicts each
    task's prior (its base rate, or the mean rating) rather than noise, so its log-loss starts at
    the base rate's."""
    body = mlp(in_dim, tower_dims, dropout)
    out_dim = tower_dims[-1] if tower_dims else in_dim
    head = nn.Linear(out_dim, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*body, head)


def parameter_tasks(model: nn.Module) -> dict[str, str | None]:
    """Parameter name -> owning task, or None for shared parameters (state_dict names)."""
    owners: dict[str, str | None] = {name: None for name, _ in model.named_parameters()}
    owners.update({name: None for name, _ in model.named_buffers()})
    for prefix, module in model.named_modules():
        if isinstance(module, PerTaskParameters):
            for task in module.keys():
                owners[f"{prefix}.{task}" if prefix else task] = task
        if isinstance(module, PerTask):
            for task, child in module.items():
                base = f"{prefix}.{task}." if prefix else f"{task}."
                for name, _ in list(child.named_parameters()) + list(child.named_buffers()):
                    owners[base + name] = task
    return owners
