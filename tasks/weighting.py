"""Loss weighting: how per-task losses become one update, independent of the architecture.

A weighting owns the backward pass (`backward(losses, shared_parameters)`) so that methods that
work on gradients rather than on loss sums fit the same slot. `losses` holds only the tasks with
labels in the batch, so every method works on any subset of its tasks.

Learned weighting state lives in the module's own parameters and buffers and travels with the model
(tasks/state.py): entries of a `PerTaskParameters` are averaged over the clients holding that task's
labels, every other parameter or buffer over all clients. Statistics kept in buffers are therefore
stored as "mass" (value x seen-flag) next to their flag, so that averaging in clients that never saw
a task still leaves value / flag equal to the mean over the clients that did.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from core.errors import InputError
from tasks.models.base import PerTaskParameters


def weighted_sum(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float | torch.Tensor]) -> torch.Tensor:
    return sum(weights[t] * loss for t, loss in losses.items())  # type: ignore[return-value]


def with_penalty(loss: torch.Tensor, penalty: torch.Tensor | None) -> torch.Tensor:
    return loss if penalty is None else loss + penalty


def number_option(name: str, value: Any, *, integer: bool = False, minimum: float | None = None,
                  exclusive: bool = False) -> float:
    """A numeric option checked to one clear InputError line (`exclusive`: strictly above `minimum`)."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"loss.{name} must be {kind}, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"loss.{name} must be {kind}, got {value!r}") from None
    if not math.isfinite(number) or (integer and not number.is_integer()):
        raise InputError(f"loss.{name} must be {kind}, got {value!r}")
    if minimum is not None and (number <= minimum if exclusive else number < minimum):
        raise InputError(f"loss.{name} must be {'>' if exclusive else '>='} {minimum:g}, got {value!r}")
    return number


def task_gradients(losses: Mapping[str, torch.Tensor], parameters: Sequence[nn.Parameter]) -> dict[str, torch.Tensor]:
    """Each task loss's gradient w.r.t. `parameters`, flattened into one vector (zeros where a loss does
    not reach a parameter). The graph is kept for the backward pass that follows."""
    result = {}
    for task, loss in losses.items():
        grads = torch.autograd.grad(loss, list(parameters), retain_graph=True, allow_unused=True)
        result[task] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                  for g, p in zip(grads, parameters)])
    return result


def add_grad(parameter: torch.Tensor, grad: torch.Tensor) -> None:
    """Accumulate into `.grad` as `Tensor.backward` does."""
    parameter.grad = grad.detach().clone() if parameter.grad is None else parameter.grad + grad.detach()


def trainable(parameters: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in parameters if p.requires_grad]


class LossWeighting(nn.Module):
    # True where backward() reads or rewrites the shared parameters' gradients itself (GradNorm,
    # PCGrad): those need dense gradients, so the id tables' sparse ones are not used under them.
    reads_gradients = False

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.task_names = list(tasks)

    def weights(self) -> dict[str, float]:
        raise NotImplementedError

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[nn.Parameter],
                 penalty: torch.Tensor | None = None) -> None:
        """Accumulate gradients for this batch's task losses (only tasks with labels in the batch), and
        of `penalty` (a regulariser outside the weighting, e.g. the L2 prior), in one backward pass."""
        with_penalty(weighted_sum(losses, self.weights()), penalty).backward()


class Equal(LossWeighting):
    def weights(self) -> dict[str, float]:
        return {t: 1.0 for t in self.task_names}


class Static(LossWeighting):
    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        given = dict(weights or {})
        for task, value in given.items():
            if float(value) < 0:
                raise InputError(f"loss.weights.{task} must be >= 0, got {value}")
        self._weights = {t: float(given.get(t, 1.0)) for t in self.task_names}

    def weights(self) -> dict[str, float]:
        return dict(self._weights)


class Uncertainty(LossWeighting):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Each task learns s_t = log sigma_t^2 and the loss is sum_t exp(-s_t) * L_t + s_t, the common
    simplified form without the paper's 1/2 factors (the same for regression and classification
    heads). Its optimum exp(-s_t) = 1 / L_t matches the paper's; dropping the 1/2 only doubles the scale.
    s lives in a `PerTaskParameters`, so it is federated per task: averaged over the clients
    holding that task's labels. A task absent from a batch leaves its s_t without gradient.
    """

    def __init__(self, tasks: Sequence[str], initial_log_variance: float = 0.0) -> None:
        super().__init__(tasks)
        start = number_option("initial_log_variance", initial_log_variance)
        self.log_variance = PerTaskParameters({t: nn.Parameter(torch.tensor(start)) for t in self.task_names})

    def weights(self) -> dict[str, float]:
        return {t: math.exp(-float(s.detach())) for t, s in self.log_variance.items()}

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[nn.Parameter],
                 penalty: torch.Tensor | None = None) -> None:
        with_penalty(sum(torch.exp(-self.log_variance[t]) * loss + self.log_variance[t] for t, loss in losses.items()),
                     penalty).backward()


class GradNorm(LossWeighting):
    """GradNorm (Chen et al., ICML 2018): learn weights that balance the tasks' gradient norms on the
    shared layer according to how fast each task trains.

    w_t = n * softplus(raw_t) / sum_all softplus(raw), so the weights always sum to n (the paper
    renormalises after each step; here the step happens after `backward`, so the weights are
    renormalised on reading). The model's gradient comes from sum_t w_t L_t; the raw weights' gradient
    only from L_grad = sum_t |G_t - mean(G) * r_t^alpha| with the targets detached, where G_t is the
    norm of grad(w_t L_t) on the LAST shared tensor that requires grad (the paper's and LibMTL's "last
    shared layer") and r_t is L_t / L_t(0) relative to the batch mean. Sums and means run over the
    batch's tasks. Since w_t only scales grad(L_t), G_t = w_t * |grad L_t| needs no second-order graph.

    Federation: the raw weights are a `PerTaskParameters` (averaged per task). The initial losses
    L_t(0) (recorded on the first batch that has task t) are plain buffers `initial_loss_<t>` with a
    flag `initial_seen_<t>`, averaged over ALL clients like shared state; the buffer holds
    flag * L_t(0), so initial_loss / initial_seen stays the mean over the clients that saw the task.
    """

    reads_gradients = True

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5) -> None:
        super().__init__(tasks)
        self.alpha = number_option("alpha", alpha, minimum=0.0)
        start = math.log(math.e - 1.0)  # softplus(start) = 1: equal weights
        self.raw = PerTaskParameters({t: nn.Parameter(torch.tensor(start)) for t in self.task_names})
        for t in self.task_names:
            self.register_buffer(f"initial_loss_{t}", torch.tensor(0.0))
            self.register_buffer(f"initial_seen_{t}", torch.tensor(0.0))

    def weight_tensors(self) -> dict[str, torch.Tensor]:
        positive = {t: nn.functional.softplus(r) for t, r in self.raw.items()}
        total = sum(positive.values())
        return {t: len(positive) * p / total for t, p in positive.items()}

    def weights(self) -> dict[str, float]:
        return {t: float(w.detach()) for t, w in self.weight_tensors().items()}

    def initial_loss(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        """L_t(0): recorded on the task's first batch, then the (federated) recorded mean."""
        mass, seen = getattr(self, f"initial_loss_{task}"), getattr(self, f"initial_seen_{task}")
        if float(seen) <= 0:
            mass.copy_(loss.detach())
            seen.fill_(1.0)
        return (mass / seen).clamp_min(1e-12)

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[nn.Parameter],
                 penalty: torch.Tensor | None = None) -> None:
        weights = self.weight_tensors()
        layer = trainable(shared_parameters)[-1:]
        norms = task_gradients(losses, layer) if layer else {}
        with_penalty(weighted_sum(losses, {t: w.detach() for t, w in weights.items()}), penalty).backward()
        if not norms:
            return
        tasks = list(losses)
        grad_norms = torch.stack([weights[t] * norms[t].norm() for t in tasks])
        with torch.no_grad():
            ratios = torch.stack([losses[t].detach() / self.initial_loss(t, losses[t]) for t in tasks])
            targets = grad_norms.mean() * (ratios / ratios.mean()) ** self.alpha
        grad_loss = (grad_norms - targets).abs().sum()
        raw = list(self.raw.values())
        for parameter, grad in zip(raw, torch.autograd.grad(grad_loss, raw, allow_unused=True)):
            if grad is not None:
                add_grad(parameter, grad)


class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, "End-to-end multi-task learning with
    attention"): w_t = n * softmax_t(r_t / T) with r_t = L_t(k-1) / L_t(k-2), the ratio of the task's
    mean loss over the last two periods; a task whose loss falls slowly gets more weight.

    The paper's period is an epoch; federated clients see epochs of different lengths, so here a
    period is a fixed `period_batches` batches. All weights are 1 until two periods exist, and a task
    without a loss in either of the last two periods gets r_t = 1.

    All state is buffers, so it is federated as shared state (averaged over all clients): the running
    sum and count of each task's loss in the current period, the batches in it, and the last two
    period means stored as seen * mean next to their seen flags.
    """

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0, period_batches: int = 50) -> None:
        super().__init__(tasks)
        self.temperature = number_option("temperature", temperature, minimum=0.0, exclusive=True)
        self.period_batches = int(number_option("period_batches", period_batches, integer=True, minimum=1))
        n = len(self.task_names)
        self.register_buffer("period_loss_sum", torch.zeros(n))
        self.register_buffer("period_loss_count", torch.zeros(n))
        self.register_buffer("period_progress", torch.tensor(0.0))
        self.register_buffer("history", torch.zeros(2, n))       # rows: period k-2, k-1
        self.register_buffer("history_seen", torch.zeros(2, n))

    def weights(self) -> dict[str, float]:
        seen = self.history_seen
        known = (seen > 0).all(dim=0)
        means = self.history / seen.clamp_min(1e-12)
        ratios = torch.where(known & (means[0] > 0), means[1] / means[0].clamp_min(1e-12), torch.ones_like(means[0]))
        values = len(self.task_names) * torch.softmax(ratios / self.temperature, dim=0)
        return dict(zip(self.task_names, values.tolist()))

    @torch.no_grad()
    def record(self, losses: Mapping[str, torch.Tensor]) -> None:
        """Add the batch's losses to the current period; close the period after `period_batches` batches."""
        for task, loss in losses.items():
            i = self.task_names.index(task)
            self.period_loss_sum[i] += loss.detach()
            self.period_loss_count[i] += 1
        self.period_progress += 1
        if float(self.period_progress) >= self.period_batches:
            seen = (self.period_loss_count > 0).float()
            self.history[0], self.history_seen[0] = self.history[1].clone(), self.history_seen[1].clone()
            self.history[1] = self.period_loss_sum / self.period_loss_count.clamp_min(1.0)
            self.history_seen[1] = seen
            for buffer in (self.period_loss_sum, self.period_loss_count, self.period_progress):
                buffer.zero_()

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[nn.Parameter],
                 penalty: torch.Tensor | None = None) -> None:
        with_penalty(weighted_sum(losses, self.weights()), penalty).backward()
        self.record(losses)


class PCGrad(LossWeighting):
    """PCGrad, gradient surgery (Yu et al., NeurIPS 2020): on the shared parameters, each task's gradient
    is projected onto the normal plane of every other task gradient it conflicts with (negative dot
    product), against the others in random order; the projected gradients are summed.

    Task-specific parameters get the plain gradient of sum_t L_t (each tower only sees its own loss).
    The shared parameters' `.grad` receives the surgered sum, accumulated onto any gradient already
    there, as `backward` would. The shuffling uses a generator seeded by `seed`; it is local to each
    process, not federated. One task in the batch is a plain backward. No learned state.
    """

    reads_gradients = True

    def __init__(self, tasks: Sequence[str], seed: int = 0) -> None:
        super().__init__(tasks)
        self.seed = int(number_option("seed", seed, integer=True, minimum=0))
        self.generator = torch.Generator().manual_seed(self.seed)

    def weights(self) -> dict[str, float]:
        return {t: 1.0 for t in self.task_names}

    def surgery(self, gradients: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum of the task gradients, each projected away from the ones it conflicts with."""
        total = torch.zeros_like(gradients[0])
        for i, gradient in enumerate(gradients):
            projected = gradient.clone()
            for j in torch.randperm(len(gradients), generator=self.generator).tolist():
                other = gradients[j]
                dot = torch.dot(projected, other)
                if j != i and dot < 0:
                    projected -= dot / other.dot(other) * other
            total += projected
        return total

    def backward(self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[nn.Parameter],
                 penalty: torch.Tensor | None = None) -> None:
        if penalty is not None:  # its own backward first: the surgery below keeps the shared grads it finds
            penalty.backward()
        shared = trainable(shared_parameters)
        if len(losses) < 2 or not shared:
            sum(losses.values()).backward()
            return
        surgered = self.surgery(list(task_gradients(losses, shared).values()))
        before = [None if p.grad is None else p.grad.clone() for p in shared]  # backward adds in place
        sum(losses.values()).backward()
        offset = 0
        for parameter, previous in zip(shared, before):
            size = parameter.numel()
            if parameter.grad is not None:  # None: no task loss reaches it, nothing to set
                part = surgered[offset:offset + size].view_as(parameter)
                parameter.grad = part.clone() if previous is None else previous + part
            offset += size


WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "equal": Equal, "static": Static, "uncertainty": Uncertainty, "gradnorm": GradNorm,
    "dwa": DynamicWeightAverage, "pcgrad": PCGrad,
}


def build_weighting(loss_cfg: Mapping[str, Any], tasks: Sequence[str]) -> LossWeighting:
    options = dict(loss_cfg)
    name = options.pop("name")
    if name not in WEIGHTINGS:
        raise InputError(f"unknown loss weighting {name!r} (known: {', '.join(WEIGHTINGS)})")
    known = [p for p in inspect.signature(WEIGHTINGS[name].__init__).parameters if p not in ("self", "tasks")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(f"loss={name}: unknown option(s) {', '.join(unknown)} (known: {', '.join(known) or 'none'})")
    try:
        return WEIGHTINGS[name](tasks, **options)
    except TypeError as exc:
        raise InputError(f"loss={name}: {exc}") from exc
