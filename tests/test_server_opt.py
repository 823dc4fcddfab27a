"""Server optimisers (server_app/server_opt.py) against their formulas, worked by hand on two parameters,
and the FedProx hook of the client loop."""

import numpy as np
import pytest
import torch

from core.config import compose_config, to_plain
from core.errors import InputError
from data.shards import Shard
from server_app.server_opt import ServerOptimizer, fedavgm_step, server_optimizer
from tasks.models import build_model
from tasks.registry import resolve_tasks
from tasks.training import ProximalTerm, make_optimizer, proximal_mu, train_epochs
from tasks.weighting import build_weighting
from tasks.wide import newton_fitted

X = {"w": np.array([1.0, -2.0])}
ADAM = {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}


def optimizer(name, **options):
    return ServerOptimizer(name, options, ["w"])


def test_fedadam_is_the_textbook_step_over_two_rounds():
    opt = optimizer("fedadam", **ADAM)
    x1 = opt.step(X, {"w": np.array([1.5, -2.5])})["w"]  # delta (0.5, -0.5)
    m, v = 0.1 * 0.5, 0.01 * 0.25
    np.testing.assert_allclose(x1, [1.0 + 0.1 * m / (np.sqrt(v) + 0.001), -2.0 - 0.1 * m / (np.sqrt(v) + 0.001)])
    x2 = opt.step({"w": x1}, {"w": x1 + np.array([0.2, 0.0])})["w"]  # delta (0.2, 0)
    m2 = np.array([0.9 * m + 0.1 * 0.2, 0.9 * -m])
    v2 = np.array([0.99 * v + 0.01 * 0.04, 0.99 * v])
    np.testing.assert_allclose(x2, x1 + 0.1 * m2 / (np.sqrt(v2) + 0.001))


def test_fedyogi_moves_its_second_moment_by_the_sign_rule():
    opt = optimizer("fedyogi", **ADAM)
    x1 = opt.step(X, {"w": np.array([1.5, -2.5])})["w"]
    v1 = 0.01 * 0.25  # from v = 0: v + (1 - b2) d^2, as Adam's first step
    x2 = opt.step({"w": x1}, {"w": x1 + np.array([0.2, 0.0])})["w"]
    d2 = np.array([0.04, 0.0])
    v2 = v1 - 0.01 * d2 * np.sign(v1 - d2)          # grows for coordinate 0 (d^2 > v), stays for 1
    m2 = np.array([0.9 * 0.05 + 0.1 * 0.2, 0.9 * -0.05])
    np.testing.assert_allclose(opt.state["v"]["w"], v2)
    np.testing.assert_allclose(x2, x1 + 0.1 * m2 / (np.sqrt(v2) + 0.001))


def test_fedavgm_without_momentum_is_fedavg_and_with_momentum_accumulates():
    aggregated = {"w": np.array([0.5, 0.5], np.float32)}
    plain = optimizer("fedavgm", server_lr=1.0, momentum=0.0).step({"w": np.array([1.0, -2.0], np.float32)}, aggregated)
    np.testing.assert_allclose(plain["w"], aggregated["w"], rtol=0, atol=1e-7)
    assert plain["w"].dtype == np.float32
    momentum = {}
    x1 = fedavgm_step(X, {"w": np.array([0.5, 0.5])}, momentum, 1.0, 0.9)["w"]
    x2 = fedavgm_step({"w": x1}, {"w": np.array([0.5, 0.5])}, momentum, 1.0, 0.9)["w"]
    np.testing.assert_allclose(x2, x1 + 0.9 * 0.5 + 0.5)  # v = 0.9 v + g, g = -delta


def test_fedavg_returns_the_aggregate_and_excluded_or_integer_arrays_are_never_stepped():
    aggregated = {"w": np.array([3.0, 4.0]), "bias": np.array([9.0]), "count": np.array([7], np.int64)}
    current = {"w": np.zeros(2), "bias": np.zeros(1), "count": np.array([1], np.int64)}
    assert optimizer("fedavg").step(current, aggregated) == aggregated
    out = ServerOptimizer("fedadam", ADAM, ["w", "count"]).step(current, aggregated)
    assert out["bias"] is aggregated["bias"] and out["count"] is aggregated["count"]
    assert not np.allclose(out["w"], aggregated["w"])


@pytest.mark.parametrize("override,message", [
    ({"name": "fedsgd"}, "unknown strategy 'fedsgd'"),
    ({"name": "fedadam", "eta": 0.1, "beta_1": 1.0, "beta_2": 0.9, "tau": 1e-3}, "beta_1"),
    ({"name": "fedavgm", "server_lr": 1.0}, "strategy.momentum"),
    ({"name": "fedprox", "proximal_mu": -1}, "proximal_mu must be >= 0"),
])
def test_bad_strategy_options_are_one_line_errors(override, message):
    with pytest.raises(InputError, match=message):
        server_optimizer(override, [])


def test_every_strategy_composes_from_the_hydra_group():
    for name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"):
        cfg = to_plain(compose_config([f"strategy={name}"]))
        assert server_optimizer(cfg["strategy"], []).name == name
    assert proximal_mu(to_plain(compose_config(["strategy=fedprox"]))["strategy"]) > 0
    assert proximal_mu(to_plain(compose_config([]))["strategy"]) == 0


def test_the_newton_fitted_biases_are_the_first_order_parameters_under_newton_only():
    cfg = to_plain(compose_config([]))
    model = build_model(cfg["model"], [5, 6], ["rating", "click"])
    fitted = newton_fitted(model, cfg["train"])
    assert fitted == {name for name, _ in model.named_parameters() if name.startswith("first_order.")}
    assert fitted and newton_fitted(model, {**cfg["train"], "first_order_fit": "sgd"}) == set()


def _train(mu):
    torch.manual_seed(0)
    cfg = to_plain(compose_config(["model.embedding_init_std=0.1", "model.dropout=0.0"]))
    tasks = resolve_tasks(["click"], ["click"])
    model, weighting = build_model(cfg["model"], [8, 8], ["click"]), build_weighting(cfg["loss"], ["click"])
    rng = np.random.default_rng(0)
    shard = Shard(rng.integers(0, 8, (64, 2)), {"click": (rng.random(64) < 0.3).astype(np.float32)}, {})
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_cfg = {**cfg["train"], "first_order_fit": "sgd", "lr": 0.5, "local_epochs": 3, "batch_size": 8}
    train_epochs(model, weighting, make_optimizer(model, weighting, train_cfg), shard, tasks, train_cfg, 1,
                 torch.device("cpu"), mu)
    return sum(float(((v - start[k]) ** 2).sum()) for k, v in model.state_dict().items())


def test_the_proximal_term_holds_a_client_near_the_global_model():
    free, held = _train(0.0), _train(50.0)
    assert held < 0.5 * free


def test_the_proximal_gradient_reaches_dense_parameters_and_only_the_looked_up_rows_of_tables():
    cfg = to_plain(compose_config([]))
    model, weighting = build_model(cfg["model"], [6, 6], ["click"]), build_weighting(cfg["loss"], ["click"])
    term = ProximalTerm(model, make_optimizer(model, weighting, cfg["train"]), mu=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # every parameter 1 away from the global model
    term.add_gradient(torch.tensor([[2, 4]]))  # the batch looks up user row 2 and item row 4
    users, items = model.embedding.tables[0].weight.grad, model.embedding.tables[1].weight.grad
    assert torch.allclose(users[2], torch.tensor(0.5)) and users[[0, 1, 3, 4, 5]].eq(0).all()
    assert torch.allclose(items[4], torch.tensor(0.5)) and items[[0, 1, 2, 3, 5]].eq(0).all()
    dense = next(p for name, p in model.named_parameters() if name.startswith("towers."))
    assert torch.allclose(dense.grad, torch.tensor(0.5))
