"""Every architecture against the contracts the rest of the system relies on: head shapes, task
ownership of parameters, label masking, config composition, and that it can learn at all."""

import copy

import pytest
import torch

from core.config import compose_config, to_plain
from core.errors import InputError
from tasks.models import MODELS, build_model, id_dropout_rates, parameter_tasks
from tasks.models.esmm import ctcvr_logit
from tasks.registry import resolve_tasks
from tasks.training import masked_task_losses
from tasks.weighting import build_weighting

BUCKETS = [10, 12, 7]
# Random embedding rows: with the default zero rows, the first step gives no gradient to weights reading them.
SMALL = {"embedding_dim": 4, "expert_dims": [8], "tower_dims": [4], "dropout": 0.0, "embedding_init_std": 0.05}
SUBSETS = [["rating"], ["purchase", "click"], ["rating", "purchase", "click"]]
TASK_CONTAINERS = ("towers", "gates", "task_experts")  # PerTask attributes, keyed by task name


def supports(name, tasks):
    return name != "esmm" or {"click", "purchase"} <= set(tasks)


def small(name, tasks, **extra):
    return build_model({"name": name, **SMALL, **extra}, BUCKETS, tasks)


def batch(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, b, (n,), generator=generator) for b in BUCKETS], dim=1)


def expected_owner(name):
    parts = name.split(".")
    if parts[0] in ("first_order", "interactions"):  # first_order.tables.<task>.<j>.weight, *.bias.<task>, interactions.weights.<task>
        return parts[2]
    for container in TASK_CONTAINERS:
        if container in parts:
            return parts[parts.index(container) + 1]
    return None


CASES = [(name, tasks) for name in MODELS for tasks in SUBSETS if supports(name, tasks)]
ALL_TASKS = SUBSETS[-1]


@pytest.mark.parametrize("name,tasks", CASES)
def test_forward_gives_one_vector_per_task_in_order(name, tasks):
    outputs = small(name, tasks)(batch(5))
    assert list(outputs) == tasks
    assert all(out.shape == (5,) and torch.isfinite(out).all() for out in outputs.values())


@pytest.mark.parametrize("name,tasks", CASES)
def test_task_modules_are_owned_by_their_task(name, tasks):
    model = small(name, tasks)
    owners = parameter_tasks(model)
    assert set(owners) == set(model.state_dict())
    assert {name: owners[name] for name in owners} == {name: expected_owner(name) for name in owners}
    assert set(owners.values()) == set(tasks) | {None}
    if name in ("mmoe", "ple"):
        assert any("experts" in k and "task_experts" not in k for k in owners)  # shared experts exist...
    assert all(owners[k] is None for k in owners if "shared_experts" in k or k.startswith("experts."))


@pytest.mark.parametrize("name", list(MODELS))
def test_configs_share_the_fair_sizes_and_build(name):
    base = to_plain(compose_config(["model=shared_bottom"]))["model"]
    cfg = to_plain(compose_config([f"model={name}"]))["model"]
    assert cfg["name"] == name
    assert {k: cfg[k] for k in base if k != "name"} == {k: v for k, v in base.items() if k != "name"}
    model = build_model(cfg, BUCKETS, ALL_TASKS)
    assert type(model) is MODELS[name] and list(model(batch(3))) == ALL_TASKS


def assert_rating_masked(model):
    """Adam steps on a batch without rating labels move no rating parameter, and every other task's."""
    tasks = resolve_tasks(ALL_TASKS, ALL_TASKS)
    x = batch(32)
    labels = {"rating": torch.full((32,), float("nan")), "click": (x[:, 0] % 2).float(),
              "purchase": (x[:, 1] % 3 == 0).float()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):  # towers' output units start at zero: the layers below them move from step 2
        losses = masked_task_losses(model(x), labels, tasks)
        assert set(losses) == {"click", "purchase"}
        optimizer.zero_grad(set_to_none=True)
        build_weighting({"name": "equal"}, ALL_TASKS).backward(losses, model.shared_parameters())
        optimizer.step()
    for key, owner in parameter_tasks(model).items():
        changed = not torch.equal(model.state_dict()[key], before[key])
        if owner == "rating":
            assert not changed, key
        elif owner is not None:
            assert changed, key


@pytest.mark.parametrize("name", list(MODELS))
def test_a_batch_without_ratings_leaves_rating_parameters_untouched(name):
    torch.manual_seed(0)
    assert_rating_masked(small(name, ALL_TASKS))


def test_ple_stacks_three_levels():
    torch.manual_seed(0)
    model = small("ple", ALL_TASKS, num_levels=3, num_shared_experts=2, num_task_experts=2)
    assert len(model.levels) == 3 and model.levels[-1].shared_gate is None
    assert all(level.shared_gate is not None for level in model.levels[:-1])
    assert all(out.shape == (6,) for out in model(batch(6)).values())
    assert_rating_masked(model)


@pytest.mark.parametrize("name,key,value", [("mmoe", "num_experts", 0), ("ple", "num_levels", 0)])
def test_bad_expert_counts_are_one_line_errors(name, key, value):
    with pytest.raises(InputError, match=f"model={name}: {key} must be >= 1, got 0"):
        small(name, ALL_TASKS, **{key: value})


def test_ctcvr_logit_is_the_product_of_probabilities_even_at_extremes():
    values = torch.tensor([-1e4, -100.0, -30.0, -5.0, 0.0, 5.0, 30.0, 100.0, 1e4])
    a, b = (g.flatten().requires_grad_() for g in torch.meshgrid(values, values, indexing="ij"))
    logit = ctcvr_logit(a, b)
    assert torch.isfinite(logit).all()
    torch.testing.assert_close(torch.sigmoid(logit), torch.sigmoid(a) * torch.sigmoid(b), atol=1e-5, rtol=0)
    logit.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@pytest.mark.parametrize("ctr_bias,cvr_bias", [(0.0, 0.0), (60.0, 60.0), (-60.0, 60.0), (60.0, -60.0), (-60.0, -60.0)])
def test_esmm_purchase_is_click_times_cvr(ctr_bias, cvr_bias):
    torch.manual_seed(0)
    model = small("esmm", ALL_TASKS).eval()
    with torch.no_grad():
        model.towers["click"][-1].bias.add_(ctr_bias)
        model.towers["purchase"][-1].bias.add_(cvr_bias)
    x = batch(64)
    out = model(x)
    assert torch.isfinite(out["purchase"]).all()
    torch.testing.assert_close(torch.sigmoid(out["purchase"]), torch.sigmoid(out["click"]) * model.cvr_probability(x),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("tasks", [["rating"], ["rating", "click"], ["purchase"]])
def test_esmm_without_click_and_purchase_is_an_input_error(tasks):
    with pytest.raises(InputError, match=f"model=esmm needs tasks click and purchase; got {', '.join(tasks)}$"):
        small("esmm", tasks)


@pytest.mark.parametrize("name", list(MODELS))
def test_default_config_learns_a_tiny_problem(name):
    torch.manual_seed(0)
    cfg = to_plain(compose_config([f"model={name}"]))["model"]
    model = build_model(cfg, BUCKETS, ["purchase", "click"])
    tasks = resolve_tasks(["purchase", "click"], ["purchase", "click"])
    x = batch(200, seed=1)
    click = (x[:, 0] % 2 == 0).float()
    labels = {"click": click, "purchase": click * (x[:, 1] % 2 == 0).float()}

    def loss(train):
        model.train(train)
        return sum(masked_task_losses(model(x), labels, tasks).values())

    with torch.no_grad():
        start = loss(False).item()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        optimizer.zero_grad()
        loss(True).backward()
        optimizer.step()
    with torch.no_grad():
        end = loss(False).item()
    assert end < 0.5 * start, (start, end)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("fit", ["newton", "sgd"])
def test_a_cold_id_changes_no_prediction_relative_to_the_id_free_prediction(name, fit):
    """Rows no training example looks up stay exactly zero through real training with L2, so an id
    never seen in training predicts exactly what a model without that id's feature predicts."""
    from data.shards import Shard
    from tasks.training import make_optimizer
    from tasks.wide import apply_newton, train_round

    torch.manual_seed(0)
    cfg = to_plain(compose_config([f"model={name}"]))
    tasks = resolve_tasks(ALL_TASKS, ALL_TASKS, label_stats={"rating": {"mean": 3.0, "std": 1.0},
                                                            "click": {"mean": 0.3}, "purchase": {"mean": 0.1}})
    model = build_model(cfg["model"], BUCKETS, ALL_TASKS)
    weighting = build_weighting({"name": "equal"}, ALL_TASKS)
    x = batch(300, seed=2)
    x[:, 0] = x[:, 0] % 5  # training sees users 0-4 only: users 5-9 are cold
    generator = torch.Generator().manual_seed(3)
    labels = {"click": (torch.rand(300, generator=generator) < 0.3).float().numpy(),
              "purchase": (torch.rand(300, generator=generator) < 0.1).float().numpy(),
              "rating": torch.randint(1, 6, (300,), generator=generator).float().numpy()}
    train_cfg = {**cfg["train"], "embedding_l2": 0.01, "bias_l2": 0.01, "first_order_fit": fit, "wide_rounds": 0}
    report, wide = train_round(model, weighting, make_optimizer(model, weighting, train_cfg),
                               Shard(x.numpy(), labels, {}), tasks, train_cfg, seed=0, device=torch.device("cpu"),
                               server_round=1)
    apply_newton(model, wide, train_cfg, tasks)
    assert report.losses and (bool(wide) == (fit == "newton"))

    cold = batch(40, seed=4)
    cold[:, 0] = 5 + cold[:, 0] % 5
    id_free = copy.deepcopy(model)
    with torch.no_grad():  # the model with the user feature removed: every user row zero
        for name_, (column, _) in id_free.id_tables().items():
            if column == 0:
                id_free.state_dict()[name_].zero_()
    model.eval(), id_free.eval()
    with torch.no_grad():
        for task, out in model(cold).items():
            torch.testing.assert_close(out, id_free(cold)[task], rtol=0, atol=0)
        warm = cold.clone()
        warm[:, 0] = 1
        assert not torch.equal(model(warm)["click"], model(cold)["click"])  # seen users do matter


def test_interactions_are_each_tasks_weighted_sum_of_pairwise_dot_products():
    from tasks.models.base import Interactions

    torch.manual_seed(0)
    vectors = torch.randn(5, 3, 4)
    interactions = Interactions(4, ["rating", "click"])
    with torch.no_grad():
        interactions.weights["click"].copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    out = interactions(vectors)
    for task, w in interactions.weights.items():
        explicit = sum(((vectors[:, a] * w) * vectors[:, b]).sum(1) for a in range(3) for b in range(a + 1, 3))
        torch.testing.assert_close(out[task], explicit)
    assert not torch.equal(out["rating"], out["click"])
    model = small("shared_bottom", ["rating", "click"])
    assert parameter_tasks(model)["interactions.weights.click"] == "click"
    assert small("shared_bottom", ["rating"], interactions=False).interactions is None


@pytest.mark.parametrize("name", list(MODELS))
def test_binary_heads_start_at_their_base_rate(name):
    model = build_model(to_plain(compose_config([f"model={name}"]))["model"], BUCKETS, ALL_TASKS)
    model.init_priors({"click": 0.2, "purchase": 0.05})
    model.eval()
    with torch.no_grad():
        out = model(batch(16))
    torch.testing.assert_close(torch.sigmoid(out["click"]), torch.full((16,), 0.2), atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.sigmoid(out["purchase"]), torch.full((16,), 0.05), atol=1e-3, rtol=0)


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("name", list(MODELS))
def test_a_head_reset_to_its_prior_predicts_it_on_every_row_and_leaves_the_other_heads(name, first_order):
    """What a head falls back to where validation says it does no better than its prior (tasks/selection.py)."""
    model = small(name, ALL_TASKS, first_order=first_order)
    with torch.no_grad():  # a trained-looking model: every parameter away from its start
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(parameter.numel())))
    model.eval()
    x, rates = batch(64), {"click": 0.2, "purchase": 0.05}
    with torch.no_grad():
        before = model(x)
        model.reset_to_prior(["purchase", "rating"], rates)
        after = model(x)
    torch.testing.assert_close(after["click"], before["click"])
    torch.testing.assert_close(after["rating"], torch.zeros(64))  # standard units: the train mean
    # ESMM's purchase head is pCTR x pCVR: the CVR falls back to the prior purchase-given-click rate.
    expected = torch.sigmoid(before["click"]) * 0.25 if name == "esmm" else torch.full((64,), 0.05)
    torch.testing.assert_close(torch.sigmoid(after["purchase"]), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("name", list(MODELS))
def test_a_recalibrated_head_outputs_a_z_plus_b_and_leaves_the_other_heads(name, first_order):
    """What tasks/calibration.py fits on validation; ESMM's click and purchase heads (purchase =
    pCTR x pCVR) are not affine in their own parts and refuse."""
    model = small(name, ALL_TASKS, first_order=first_order)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(parameter.numel())))
    model.eval()
    x = batch(64)
    with torch.no_grad():
        before = model(x)
        model.recalibrate("rating", 0.7, -0.2)
        after = model(x)
    torch.testing.assert_close(after["rating"], 0.7 * before["rating"] - 0.2, atol=1e-5, rtol=1e-5)
    for task in ("purchase", "click"):
        torch.testing.assert_close(after[task], before[task])
    if name == "esmm":
        assert model.calibratable_tasks() == ["rating"]
        with pytest.raises(ValueError, match="cannot be recalibrated"):
            model.recalibrate("click", 0.5, 0.0)
    else:
        model.recalibrate("click", 1.5, 0.4)
        torch.testing.assert_close(model(x)["click"], 1.5 * before["click"] + 0.4, atol=1e-5, rtol=1e-5)


def test_first_order_biases_belong_to_their_task_and_start_at_zero():
    model = build_model({**SMALL, "name": "shared_bottom"}, BUCKETS, ALL_TASKS)
    tables = model.id_tables()
    assert tables["embedding.tables.1.weight"] == (1, None)
    assert tables["first_order.tables.click.2.weight"] == (2, "click")
    owners = parameter_tasks(model)
    assert all(owners[name] == task for name, (_, task) in tables.items())
    assert all(float(model.state_dict()[name].abs().sum()) == 0 for name in tables if name.startswith("first_order"))
    no_wide = build_model({**SMALL, "name": "shared_bottom", "first_order": False}, BUCKETS, ALL_TASKS)
    assert no_wide.first_order is None and not any(k.startswith("first_order") for k in no_wide.state_dict())


@pytest.mark.parametrize("name", list(MODELS))
def test_id_dropout_replaces_lookups_by_the_cold_vector_in_training_only(name):
    tasks = ALL_TASKS if supports(name, ALL_TASKS) else ["purchase", "click"]
    model = small(name, tasks, id_dropout=0.3)
    x = batch(4000, seed=5)
    lookups = torch.stack(model.embedding.lookups(x), dim=1)
    model.train()
    torch.manual_seed(0)
    vectors = model.embedding.vectors(x)
    dropped = (vectors == 0).all(-1)
    assert torch.equal(vectors[~dropped], lookups[~dropped])   # a lookup is kept whole or is the zero vector
    assert 0.27 < dropped.float().mean().item() < 0.33
    # The deep and the pairwise parts see the same draw: raw() looks up once.
    torch.manual_seed(1)
    raw = model.raw(x)
    torch.manual_seed(1)
    same = model.embedding.vectors(x)
    deep, pairwise, wide = model.deep(model.embedding.combine(same)), model.interactions(same), model.first_order(x)
    for task in raw:
        torch.testing.assert_close(raw[task], deep[task] + pairwise[task] + wide[task])
    model.eval()
    assert torch.equal(model.embedding.vectors(x), lookups)


def test_id_dropout_out_of_range_is_a_one_line_error():
    with pytest.raises(InputError, match=r"id_dropout must be auto or lie in \[0, 1\).*got 1.0"):
        small("shared_bottom", ALL_TASKS, id_dropout=1.0)
    with pytest.raises(InputError, match="id_dropout must be auto or a number in"):
        id_dropout_rates("often", {}, ["user_id"])


def test_id_dropout_per_column_drops_each_column_at_its_own_rate():
    rates = [0.4, 0.0, 0.1][:len(BUCKETS)]
    model = small("shared_bottom", ALL_TASKS, id_dropout=rates)
    x = batch(6000, seed=3)
    lookups = torch.stack(model.embedding.lookups(x), dim=1)
    model.train()
    torch.manual_seed(0)
    vectors = model.embedding.vectors(x)
    dropped = (vectors == 0).all(-1) & (lookups != 0).any(-1)
    for column, rate in enumerate(rates):
        assert abs(dropped[:, column].float().mean().item() - rate) < 0.03
    assert torch.equal(vectors[:, 1], lookups[:, 1])  # a column at 0 is never dropped
    with pytest.raises(InputError, match="one value per hashed column"):
        small("shared_bottom", ALL_TASKS, id_dropout=[0.1])


def test_id_dropout_auto_follows_each_columns_cold_share():
    hashed = ["user_id", "item_id", "category"]
    # cold on 40 % and 30 % of validation rows: dropped that often; a column cold under 20 % keeps its ids
    assert id_dropout_rates("auto", {"user_id": 0.4, "item_id": 0.3, "category": 0.19}, hashed) == [0.4, 0.3, 0.0]
    assert id_dropout_rates("auto", {"user_id": 0.95}, hashed) == [0.5, 0.0, 0.0]  # never more than half
    # nothing cold that often (or no validation split, no shares): plain 0, no draw at all
    assert id_dropout_rates("auto", {"user_id": 0.05, "item_id": 0.0}, hashed) == 0.0
    assert id_dropout_rates("auto", {}, hashed) == 0.0
    assert id_dropout_rates(0.2, {"user_id": 0.9}, hashed) == 0.2  # a number is taken as given
    no_plan = small("shared_bottom", ALL_TASKS, id_dropout="auto").embedding  # no plan, no shares
    assert no_plan.id_dropout.tolist() == [0.0] * len(BUCKETS) and not no_plan.drops_ids
