"""The DP mechanism as plain functions: clipping bounds an update's norm, the noise has the std its
formula says, the private multi-task mean noises each head for its own count, the accountant and the
settings refuse what is not supported."""

import math

import numpy as np
import pytest

from core.errors import InputError
from core.privacy import (PrivacySettings, add_gaussian_noise, clip_update, l2_norm, noise_std,
                          privatize_locally)
from server_app.accounting import PrivacyBudget, sample_rate
from server_app.aggregation import ClientUpdate
from server_app.private_aggregation import private_mean
from tasks.experiment import resolved_training
from tasks.registry import TASKS

OWNERS = {"shared": None, "towers.rating.w": "rating", "towers.click.w": "click"}


def state(shared, rating, click):
    return {"shared": np.asarray(shared, np.float32), "towers.rating.w": np.asarray(rating, np.float32),
            "towers.click.w": np.asarray(click, np.float32)}


@pytest.mark.parametrize("scale", [0.01, 1.0, 300.0])
def test_a_clipped_update_is_never_longer_than_the_bound(scale):
    rng = np.random.default_rng(0)
    update = {"a": rng.normal(size=(50, 4)) * scale, "b": rng.normal(size=7) * scale, "c": np.float32(scale)}
    clipped = clip_update(update, 1.5)
    assert l2_norm(clipped) <= 1.5 + 1e-9
    if l2_norm(update) <= 1.5:  # a short update passes unchanged
        for name in update:
            np.testing.assert_allclose(clipped[name], update[name])
    else:  # a long one keeps its direction and has exactly the bound's length
        assert l2_norm(clipped) == pytest.approx(1.5)
        np.testing.assert_allclose(clipped["a"] / clipped["b"][0], update["a"] / update["b"][0])


def test_noise_std_is_multiplier_times_bound_over_contributors():
    assert noise_std(1.0, 0.5, 4) == pytest.approx(0.125)
    assert noise_std(2.0, 3.0) == pytest.approx(6.0)
    with pytest.raises(ValueError):
        noise_std(1.0, 1.0, 0)


def test_measured_noise_std_matches_the_formula():
    zeros = {"w": np.zeros((400, 250))}
    noisy = add_gaussian_noise(zeros, noise_std(1.3, 0.7, 5), np.random.default_rng(1))["w"]
    # 100,000 draws: the sample std is within 1 % of the formula's (its own std is ~0.22 %).
    assert noisy.std() == pytest.approx(1.3 * 0.7 / 5, rel=0.01)
    assert abs(noisy.mean()) < 0.01 * 1.3 * 0.7 / 5


def test_local_dp_sends_the_global_state_plus_a_clipped_update_plus_noise():
    sent = {"w": np.zeros(20000, np.float32)}
    trained = {"w": np.full(20000, 1.0, np.float32)}  # norm 141, clipped to 2 (0.01414 each)
    out = privatize_locally(sent, trained, clip_norm=2.0, noise_multiplier=0.0, rng=np.random.default_rng(0))
    assert out["w"].dtype == np.float32 and l2_norm(out) == pytest.approx(2.0, rel=1e-5)
    noisy = privatize_locally(sent, trained, clip_norm=2.0, noise_multiplier=0.5, rng=np.random.default_rng(0))
    assert (noisy["w"] - out["w"]).std() == pytest.approx(0.5 * 2.0, rel=0.02)


def test_private_mean_without_noise_is_the_unweighted_mean_of_clipped_updates():
    current = state([0.0, 0.0], [0.0], [0.0])
    big = ClientUpdate(state([30.0, 40.0], [0.0], [0.0]), examples=1000, label_counts={"click": 1000})  # norm 50 -> 1
    small = ClientUpdate(state([0.3, 0.4], [0.0], [0.0]), examples=10, label_counts={"click": 10})      # norm 0.5
    out, report = private_mean(current, [big, small], OWNERS, clip_norm=1.0, noise_multiplier=0.0,
                               rng=np.random.default_rng(0))
    np.testing.assert_allclose(out["shared"], [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2], rtol=1e-6)  # examples do not weigh
    assert (report.clipped, report.updates) == (1, 2)


def test_a_head_averaged_over_fewer_clients_gets_the_noise_of_its_count():
    current = state(np.zeros(20000), np.zeros(20000), np.zeros(20000))
    updates = [ClientUpdate(current, examples=10, label_counts={"click": 10, "rating": 10 if k == 0 else 0})
               for k in range(4)]
    out, report = private_mean(current, updates, OWNERS, clip_norm=2.0, noise_multiplier=1.0,
                               rng=np.random.default_rng(0))
    assert report.signal == 0.0 and report.noise == pytest.approx(np.sqrt(20000 * (0.5**2 + 0.5**2 + 2.0**2)), rel=0.01)
    assert out["shared"].std() == pytest.approx(1.0 * 2.0 / 4, rel=0.03)          # 4 contributors
    assert out["towers.click.w"].std() == pytest.approx(1.0 * 2.0 / 4, rel=0.03)   # 4 hold clicks
    assert out["towers.rating.w"].std() == pytest.approx(1.0 * 2.0 / 1, rel=0.03)  # 1 holds ratings


def test_a_client_does_not_contribute_to_a_head_it_holds_no_labels_of():
    current = state([0.0], [5.0], [0.0])
    rated = ClientUpdate(state([1.0], [6.0], [0.0]), examples=5, label_counts={"rating": 5})
    unrated = ClientUpdate(state([1.0], [5.0], [0.0]), examples=5, label_counts={"click": 5})
    out, _ = private_mean(current, [rated, unrated], OWNERS, clip_norm=100.0, noise_multiplier=0.0,
                          rng=np.random.default_rng(0))
    np.testing.assert_allclose(out["towers.rating.w"], [6.0])  # not (6 + 5) / 2
    np.testing.assert_allclose(out["towers.click.w"], [0.0])   # the one client holding clicks left the head as it was


def test_under_local_dp_the_server_neither_clips_nor_noises():
    current = state([0.0, 0.0], [0.0], [0.0])
    noised = [ClientUpdate(state([9.0, 0.0], [0.0], [0.0]), 1, {"click": 1}),
              ClientUpdate(state([-3.0, 4.0], [0.0], [0.0]), 1, {"click": 1})]
    out, _ = private_mean(current, noised, OWNERS, clip_norm=None, noise_multiplier=1.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(out["shared"], [3.0, 2.0])


def test_the_accountant_grows_with_rounds_and_shrinks_with_sampling():
    settings = PrivacySettings("dp", clip_norm=1.0, noise_multiplier=1.0, delta=1e-5)
    full, sampled = PrivacyBudget(settings), PrivacyBudget(settings)
    assert full.epsilon == 0.0
    eps_full = [full.spend(1.0)["epsilon"] for _ in range(3)]
    eps_sampled = [sampled.spend(0.1)["epsilon"] for _ in range(3)]
    assert eps_full[0] < eps_full[1] < eps_full[2] and all(s < f for s, f in zip(eps_sampled, eps_full))
    assert full.epsilon_after(1.0) > eps_full[-1] == full.epsilon  # a trial round changes nothing
    assert PrivacyBudget(PrivacySettings("dp", 1.0, 0.0, 1e-5)).spend(1.0)["epsilon"] == math.inf


def test_the_target_epsilon_is_checked_before_a_round():
    budget = PrivacyBudget(PrivacySettings("dp", 1.0, 1.0, 1e-5, target_epsilon=6.0))
    assert not budget.exceeds_target(1.0)
    budget.spend(1.0)  # ~4.7
    assert budget.exceeds_target(1.0)  # a second round would bring ~7.1


def test_sampling_rate_is_the_sampled_share_centrally_and_one_locally():
    assert sample_rate(PrivacySettings("dp", 1.0, 1.0, 1e-5), 5, 20) == 0.25
    assert sample_rate(PrivacySettings("ldp", 1.0, 1.0, 1e-5), 5, 20) == 1.0


def test_default_config_has_no_privacy_and_dp_switches_off_newton_and_row_counts(tiny_cfg):
    assert PrivacySettings.from_config(tiny_cfg()).mode == "none"
    cfg = tiny_cfg("privacy=dp", "privacy.noise_multiplier=0.3")
    settings = PrivacySettings.from_config(cfg)
    assert (settings.mode, settings.noise_multiplier) == ("dp", 0.3)
    assert cfg["train"]["first_order_fit"] == "sgd" and cfg["federation"]["table_aggregation"] == "dense"
    # and with it the embedding rows' statistics: auto resolves to off even on a run without ratings
    assert resolved_training(cfg["train"], [TASKS["click"]])["embedding_newton"] is False


@pytest.mark.parametrize("overrides, message", [
    (["privacy=dp", "train.first_order_fit=newton"], "needs train.first_order_fit=sgd"),
    (["privacy=ldp", "federation.table_aggregation=rows"], "needs federation.table_aggregation=dense"),
    (["privacy=secagg", "train.embedding_newton=true"], "needs train.embedding_newton=false or auto"),
    (["privacy=dp", "privacy.clip_norm=0"], "privacy.clip_norm must be > 0"),
    (["privacy=dp", "privacy.on_target=pause"], "privacy.on_target must be stop or warn"),
    (["privacy=dp", "mode=centralized"], "needs mode=federated"),
    (["privacy=ldp", "privacy.delta=1.5"], "privacy.delta must be in (0, 1)"),
])
def test_unsupported_combinations_are_refused_in_one_line(tiny_cfg, overrides, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        PrivacySettings.from_config(tiny_cfg(*overrides))
    assert "\n" not in str(caught.value)


def test_privacy_bench_table_averages_seeds_and_shows_epsilon(tmp_path):
    import json

    from benchmarks.privacy import run_dir, settings, table

    def write(label, seed, auc, epsilon):
        where = run_dir(tmp_path, "default", label, seed)
        where.mkdir(parents=True)
        final = {"purchase": {"auc": auc}, "click": {"auc": auc}, "rating": {"rmse": 1.0}}
        rounds = [{"round": 5, **({"privacy": {"epsilon": epsilon, "delta": 1e-5}} if label != "none" else {})}]
        (where / "metrics.json").write_text(json.dumps({"tasks": final, "rounds": rounds}))

    write("none", 0, 0.70, None)
    write("dp-z1", 0, 0.60, 9.0)
    write("dp-z1", 1, 0.62, 9.0)
    write("dp-z0", 0, 0.65, None)  # JSON null: unbounded
    text = table(tmp_path, ["default"], settings([0.0, 1.0]), seeds=2)
    rows = {line.split(" | ")[2]: line for line in text.splitlines()[2:]}
    assert "- (no DP)" in rows["-"] and "0.7000" in rows["-"]
    assert "| ∞ |" in rows["0"]
    assert "| 9 | 0.6100 ± 0.0141 |" in rows["1"] and rows["1"].endswith("| 5 | 2 |")


def test_the_sum_of_weighted_vectors_decodes_to_the_multitask_average():
    from core.secure_sum import decode_sum, encode_weighted
    from server_app.aggregation import aggregate_multitask

    current = state([0.0, 0.0], [9.0], [9.0])
    updates = [ClientUpdate(state([1.0, 2.0], [2.0], [1.0]), examples=100, label_counts={"rating": 20, "click": 100}),
               ClientUpdate(state([4.0, 8.0], [5.0], [3.0]), examples=50, label_counts={"rating": 60, "click": 50}),
               ClientUpdate(state([7.0, 1.0], [-1e3], [7.0]), examples=300, label_counts={"click": 300})]
    bound = 300.0
    vectors = [encode_weighted(u.arrays, OWNERS, {None: u.examples, **u.label_counts}, bound) for u in updates]
    assert max(float(np.abs(a).max()) for v in vectors for a in v) <= 8.0  # inside SecAgg+'s clipping range
    summed = [sum(parts) for parts in zip(*vectors)]
    decoded = decode_sum(summed, current, OWNERS)
    expected = aggregate_multitask(current, updates, OWNERS)
    for name in current:
        np.testing.assert_allclose(decoded[name], expected[name], rtol=1e-6)
        assert decoded[name].dtype == current[name].dtype


def test_secure_aggregation_refuses_the_per_row_statistics(tiny_cfg):
    assert PrivacySettings.from_config(tiny_cfg("privacy=secagg")).mode == "secagg"
    with pytest.raises(InputError, match="needs train.first_order_fit=sgd"):
        PrivacySettings.from_config(tiny_cfg("privacy=secagg", "train.first_order_fit=newton"))


def test_the_cli_refuses_dp_with_newton_statistics_in_one_line_before_any_run(tmp_path):
    """launch.cli.run, what `merchant-fl` runs: the InputError its door prints as one line with exit code 2
    (tests/test_cli.py runs the door's process)."""
    from core.config import compose_config
    from launch.cli import run
    from tests.conftest import TINY

    out = tmp_path / "run"
    with pytest.raises(InputError) as caught:
        run(compose_config([*TINY, "privacy=dp", "train.first_order_fit=newton"]), out)
    assert str(caught.value) == ("privacy=dp needs train.first_order_fit=sgd "
                                 "(the Newton statistics are unclipped per-row sums), got newton")
    assert not out.exists()  # refused before anything ran or was written
