"""Loss weightings on tiny problems whose outcome is known."""

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import InputError
from data.shards import Shard
from server_app.aggregation import ClientUpdate, aggregate_multitask
from tasks.models import build_model, parameter_tasks
from tasks.registry import resolve_tasks
from tasks.training import make_optimizer, train_epochs
from tasks.weighting import build_weighting

TASKS = ["rating", "click"]
MODEL = {"name": "shared_bottom", "embedding_dim": 4, "expert_dims": [8], "tower_dims": [4], "dropout": 0.0}
METHODS = ["equal", "static", "uncertainty", "gradnorm", "dwa", "pcgrad"]


@pytest.fixture(autouse=True)
def one_thread():
    """These problems are tiny: thread hand-offs would cost more than the math."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pcgrad_shared_grad(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared gradient PCGrad leaves for L1 = w.a + h^2, L2 = w.b; and the task-specific h's gradient."""
    w = nn.Parameter(torch.zeros(2))
    h = nn.Parameter(torch.tensor(3.0))
    build_weighting({"name": "pcgrad"}, TASKS).backward({"rating": w @ a + h ** 2, "click": w @ b}, [w])
    return w.grad, h.grad


def test_pcgrad_projects_conflicting_gradients():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # a.b = -1 < 0
    grad, head_grad = pcgrad_shared_grad(a, b)
    # a - (a.b / |b|^2) b = (0.5, 0.5); b - (a.b / |a|^2) a = (0, 1)
    assert torch.allclose(grad, torch.tensor([0.5, 1.5]))
    assert grad @ a >= 0 and grad @ b >= 0
    assert head_grad.item() == pytest.approx(6.0)  # the task-specific parameter gets its plain gradient


def test_pcgrad_leaves_agreeing_gradients_alone():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    grad, _ = pcgrad_shared_grad(a, b)
    assert torch.allclose(grad, a + b)


def test_pcgrad_accumulates_onto_existing_gradients():
    w = nn.Parameter(torch.zeros(2))
    w.grad = torch.ones(2)
    build_weighting({"name": "pcgrad"}, TASKS).backward(
        {"rating": w @ torch.tensor([1.0, 0.0]), "click": w @ torch.tensor([-1.0, 1.0])}, [w])
    assert torch.allclose(w.grad, torch.tensor([1.5, 2.5]))


def two_task_regression(noise: dict[str, float], scale: dict[str, float], method: dict, steps: int,
                        on_step=None):
    """A shared linear layer with one head per task, trained with Adam on `method`; returns the weighting."""
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    targets = {t: x @ torch.randn(4) + s * torch.randn(256) for t, s in noise.items()}
    shared, heads = nn.Linear(4, 8), nn.ModuleDict({t: nn.Linear(8, 1) for t in noise})
    weighting = build_weighting(method, list(noise))
    optimizer = torch.optim.Adam(list(shared.parameters()) + list(heads.parameters()) + list(weighting.parameters()),
                                 lr=0.02)
    for _ in range(steps):
        z = shared(x)
        losses = {t: scale[t] * (heads[t](z).squeeze(1) - y).pow(2).mean() for t, y in targets.items()}
        optimizer.zero_grad(set_to_none=True)
        weighting.backward(losses, list(shared.parameters()))
        optimizer.step()
        if on_step:
            on_step(weighting)
    return weighting


def test_uncertainty_down_weights_the_noisy_task():
    weighting = two_task_regression({"noisy": 3.0, "clean": 0.1}, {"noisy": 1.0, "clean": 1.0},
                                    {"name": "uncertainty"}, steps=200)
    w = weighting.weights()
    assert w["noisy"] < 0.5 and w["clean"] > 5 * w["noisy"]


def test_gradnorm_down_weights_the_large_loss_and_keeps_the_sum():
    sums = []
    weighting = two_task_regression({"big": 0.1, "small": 0.1}, {"big": 10.0, "small": 1.0},
                                    {"name": "gradnorm"}, steps=100,
                                    on_step=lambda wt: sums.append(sum(wt.weights().values())))
    w = weighting.weights()
    assert w["big"] < w["small"]
    assert np.allclose(sums, 2.0, atol=1e-5)


def test_dwa_favours_the_task_whose_loss_stalls():
    weighting = build_weighting({"name": "dwa", "period_batches": 2}, ["fast", "flat"])
    p = nn.Parameter(torch.tensor(1.0))
    history = []
    for period in range(5):
        for _ in range(2):
            history.append(weighting.weights())
            weighting.backward({"fast": p * 0.5 ** period, "flat": p * 1.0}, [p])
    assert all(w == {"fast": 1.0, "flat": 1.0} for w in history[:4])  # fewer than two periods so far
    w = weighting.weights()
    assert w["flat"] > w["fast"]
    assert sum(w.values()) == pytest.approx(2.0)
    p.grad = None
    weighting.backward({"fast": p * 1.0, "flat": p * 1.0}, [p])  # the weights are what backward applies
    assert p.grad.item() == pytest.approx(2.0)
    assert weighting.weights() == w  # mid-period: unchanged


def test_dwa_task_missing_from_a_period_keeps_ratio_one():
    weighting = build_weighting({"name": "dwa", "period_batches": 1, "temperature": 1.0}, ["a", "b"])
    p = nn.Parameter(torch.tensor(1.0))
    for loss in (4.0, 2.0):
        weighting.backward({"a": p * loss}, [p])
    expected = torch.softmax(torch.tensor([0.5, 1.0]), 0) * 2
    assert list(weighting.weights().values()) == pytest.approx(expected.tolist())


def tiny_model_losses(tasks: list[str]):
    torch.manual_seed(0)
    model = build_model(MODEL, [10, 10], TASKS)
    with torch.no_grad():  # as mid-training: output units start at zero, which gives shared layers no gradient
        for head in model.towers.values():
            head[-1].weight.normal_(std=0.5)
    outputs = model(torch.randint(0, 10, (8, 2)))
    return model, {t: outputs[t].pow(2).mean() + 1.0 for t in tasks}


@pytest.mark.parametrize("name", METHODS)
def test_one_task_batch_gives_gradients(name):
    weighting = build_weighting({"name": name}, TASKS)
    model, losses = tiny_model_losses(["click"])
    weighting.backward(losses, model.shared_parameters())
    owners = parameter_tasks(model)
    for key, parameter in model.named_parameters():
        if owners[key] == "rating":
            assert parameter.grad is None, key
        else:
            assert parameter.grad is not None, key
    owned = parameter_tasks(weighting)
    for key, parameter in weighting.named_parameters():
        assert (parameter.grad is not None) == (owned[key] == "click") or name == "gradnorm", key
        if name == "gradnorm":
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trips(name):
    options = {"name": name, **({"period_batches": 1} if name == "dwa" else {})}
    weighting = build_weighting(options, TASKS)
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.1) if list(weighting.parameters()) else None
    for step in range(3):
        model, losses = tiny_model_losses(TASKS)
        losses["rating"] = losses["rating"] * (3 - step)
        weighting.backward(losses, model.shared_parameters())
        if optimizer:
            optimizer.step()
            optimizer.zero_grad()
    if name in ("uncertainty", "gradnorm", "dwa"):
        assert weighting.weights() != build_weighting(options, TASKS).weights()  # something was learned
    fresh = build_weighting(options, TASKS)
    fresh.load_state_dict(weighting.state_dict())
    assert fresh.weights() == weighting.weights()


def test_learned_weights_are_owned_by_their_task():
    owners = parameter_tasks(build_weighting({"name": "uncertainty"}, TASKS))
    assert owners == {"log_variance.rating": "rating", "log_variance.click": "click"}
    owners = parameter_tasks(build_weighting({"name": "gradnorm"}, TASKS))
    assert owners["raw.rating"] == "rating" and owners["raw.click"] == "click"
    assert owners["initial_loss_rating"] is None and owners["initial_seen_click"] is None


def test_gradnorm_initial_loss_survives_averaging_with_clients_that_never_saw_the_task():
    seen = build_weighting({"name": "gradnorm"}, TASKS)
    seen.initial_loss("rating", torch.tensor(4.0))
    unseen = build_weighting({"name": "gradnorm"}, TASKS)
    state = {k: v.numpy() for k, v in seen.state_dict().items()}
    updates = [ClientUpdate({k: v.numpy() for k, v in w.state_dict().items()}, examples=10,
                            label_counts={"rating": 10 if w is seen else 0, "click": 10}) for w in (seen, unseen)]
    merged = aggregate_multitask(state, updates, parameter_tasks(seen))
    fresh = build_weighting({"name": "gradnorm"}, TASKS)
    fresh.load_state_dict({k: torch.as_tensor(v) for k, v in merged.items()})
    assert fresh.initial_loss("rating", torch.tensor(100.0)).item() == pytest.approx(4.0)


@pytest.mark.parametrize("name", METHODS)
def test_trains_in_the_real_loop(name):
    torch.manual_seed(0)
    model = build_model(MODEL, [10, 10], TASKS)
    n = 32
    rng = np.random.default_rng(0)
    rating = rng.uniform(1, 5, n).astype(np.float32)
    rating[::3] = np.nan
    shard = Shard(rng.integers(0, 10, (n, 2)), {"rating": rating, "click": (np.arange(n) % 2).astype(np.float32)}, {})
    weighting = build_weighting({"name": name}, TASKS)
    train = {"optimizer": "adam", "lr": 0.01, "local_epochs": 2, "batch_size": 4}
    report = train_epochs(model, weighting, make_optimizer(model, weighting, train), shard,
                          resolve_tasks(TASKS, TASKS), train, 0, torch.device("cpu"))
    assert set(report.losses) == set(TASKS) and all(np.isfinite(v) for v in report.losses.values())
    assert all(np.isfinite(v) for v in weighting.weights().values())


@pytest.mark.parametrize("options", [
    {"name": "gradnorm", "beta": 1.0},
    {"name": "gradnorm", "alpha": -1},
    {"name": "gradnorm", "alpha": "abc"},
    {"name": "dwa", "temperature": 0},
    {"name": "dwa", "period_batches": 1.5},
    {"name": "dwa", "period_batches": True},
    {"name": "pcgrad", "seed": "x"},
    {"name": "uncertainty", "initial_log_variance": float("nan")},
    {"name": "equal", "weights": {}},
    {"name": "nope"},
])
def test_bad_options_raise_input_error(options):
    with pytest.raises(InputError) as info:
        build_weighting(options, TASKS)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method", METHODS)
def test_a_penalty_in_the_same_backward_adds_its_plain_gradient(method):
    """The training loop hands the L2 prior to the weighting's backward: every weighting adds the
    penalty's own gradient, untouched (PCGrad's surgery and GradNorm's weights apply to the tasks only)."""
    def grads(with_penalty: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        w, h = nn.Parameter(torch.tensor([0.5, -1.0])), nn.Parameter(torch.tensor(2.0))
        weighting = build_weighting({"name": method}, TASKS)
        losses = {"rating": (w @ torch.tensor([1.0, 0.0]) + h) ** 2, "click": (w @ torch.tensor([-1.0, 1.0])) ** 2}
        penalty = 0.5 * (w ** 2).sum() + h ** 2 if with_penalty else None
        weighting.backward(losses, [w], penalty)
        return [w.grad.clone(), h.grad.clone()]
    plain, penalised = grads(False), grads(True)
    torch.testing.assert_close(penalised[0] - plain[0], torch.tensor([0.5, -1.0]))  # d/dw 0.5|w|^2 = w
    torch.testing.assert_close(penalised[1] - plain[1], torch.tensor(4.0))           # d/dh h^2 = 2h


def test_training_skips_and_restores_the_parameters_the_optimizer_does_not_train():
    from tasks.training import only_trained_parameters

    trained, fitted = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    model = nn.Module()
    model.a, model.b = trained, fitted
    optimizer = torch.optim.SGD([trained], lr=0.1)
    with only_trained_parameters(model, optimizer):
        (trained.sum() * fitted.sum()).backward()
        assert not fitted.requires_grad and fitted.grad is None and trained.grad is not None
    assert fitted.requires_grad
