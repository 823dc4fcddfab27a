"""Failures, exact resume and init_from through real Flower simulations (4 merchants), run in this process
through what the `merchant-fl` door runs (launch.cli.run; faulty merchants: run_federated_simulation with
tests/faulty_clients.py's mod); the door's own process, exit code and error line are tested in
test_simulation.py and test_cli.py."""

import json

import numpy as np
import pytest
import torch

from core import protocol
from core.config import compose_config, to_plain
from launch.cli import run as cli_run
from launch.simulation import run_federated_simulation
from server_app.strategy import RoundFailed
from tests.conftest import TINY, flower_log
from tests.faulty_clients import fault_mod

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]


def merchant_fl(out, *overrides) -> list[str]:
    """A finished federated run into `out`; the lines Flower logged."""
    with flower_log() as lines:
        cli_run(compose_config([*TINY, "ranking.enabled=false", *overrides]), out)
    return lines


def faulty(out, faults: str, *overrides) -> list[str]:
    """A federated run whose nodes named in `faults` (partition id=raise|nan|shape) break their replies."""
    cfg = to_plain(compose_config([*TINY, "ranking.enabled=false", *overrides]))
    with flower_log() as lines:
        run_federated_simulation(cfg, out, [fault_mod({int(k): v for k, v in (f.split("=") for f in faults.split(","))})])
    return lines


def test_a_raising_and_a_nan_client_are_rejected_and_the_run_finishes(tmp_path):
    out = tmp_path / "run"
    log = faulty(out, "1=raise,2=nan")
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    by_round = {r: [f for f in doc["failures"] if f["round"] == r] for r in (1, 2)}
    for failures in by_round.values():
        crashed = [f for f in failures if "injected fault: this merchant's node crashed" in f["reason"]]
        poisoned = [f for f in failures if f["reason"].startswith("update rejected: array ")
                    and f["reason"].endswith("holds 1 non-finite value(s)")]
        assert len(crashed) == len(poisoned) == 1 and len(failures) == 2, doc["failures"]
        assert all(f["merchant"] for f in failures)
    assert len({f["merchant"] for f in doc["failures"]}) == 2
    assert any("failed: update rejected" in line for line in log)  # logged with its merchant
    state = torch.load(out / "model.pt", weights_only=True)["state"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert doc["rounds"][2]["tasks"]["click"]["auc"] > doc["rounds"][0]["tasks"]["click"]["auc"]


def test_a_refit_no_node_answers_leaves_the_trained_model_and_the_run_finishes(tmp_path):
    """Every node crashes on the refit queries after training (refit_biases, then refit_embeddings): the
    run still writes its kept, calibrated model, with no refit step taken, each crash a failure of its
    merchant, and one warning a part."""
    out = tmp_path / "run"
    log = faulty(out, "0=refit,1=refit,2=refit,3=refit", "data.val_fraction=0.2")
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["refit_steps"] == doc["embedding_refit_steps"] == 0 and doc["select_round"] == "best_val"
    refit_failures = [f for f in doc["failures"] if "summing its refit statistics" in f["reason"]]
    assert len(refit_failures) == 2 * 4 and all(f["merchant"] for f in refit_failures)  # each part asked once
    for part in (protocol.REFIT_BIAS, protocol.REFIT_EMBEDDING):
        assert any(f"refit ({part}): " in line and "keeps those parameters as they are" in line for line in log)
    assert (out / "model.pt").exists()


def test_too_few_usable_replies_fail_the_round_with_a_clear_line_and_keep_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RoundFailed) as caught:  # what the door prints as `merchant-fl: error: ...`, exit 2
        faulty(out, "0=shape", "federation.min_replies=4")
    assert str(caught.value).startswith("round 1: 3 of 4 clients sent a usable update, federation.min_replies=4 "
                                        "needs 4; latest failure: update rejected: array")
    assert "\n" not in str(caught.value)
    assert not (out / "metrics.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["round"] == 0  # round 0 survives to resume from


RESUMABLE = ["strategy=fedadam", "federation.clients_per_round=3", "data.val_fraction=0.2", "select_round=best_val", "patience=0",
             "train.average_decay=0.5"]  # the rounds' average must carry across the resume too


def test_a_run_stopped_after_round_2_of_3_and_resumed_ends_as_the_uninterrupted_run(tmp_path):
    """Round 1 fits the biases; the rounds' average starts at round 2, so round 3 is the first whose
    average reads what the checkpoint carried."""
    whole, half, resumed = tmp_path / "whole", tmp_path / "half", tmp_path / "resumed"
    for out, extra in ((whole, ["federation.rounds=3"]), (half, ["federation.rounds=2"]),
                       (resumed, ["federation.rounds=3", f"resume={half}"])):
        log = merchant_fl(out, *RESUMABLE, *extra)
    assert any("resume: continuing" in line for line in log)
    a, b = (json.loads((out / "metrics.json").read_text()) for out in (whole, resumed))
    assert [r["round"] for r in b["rounds"]] == [0, 1, 2, 3] and b["selected_round"] == a["selected_round"]
    for ra, rb in zip(a["rounds"], b["rounds"]):
        for task, metrics in ra["tasks"].items():
            for name, value in metrics.items():
                assert rb["tasks"][task][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (ra["round"], task, name)
    for task, metrics in a["tasks"].items():
        assert b["tasks"][task] == pytest.approx(metrics, rel=1e-5, abs=1e-6)
    sa, sb = (torch.load(out / "model.pt", weights_only=True)["state"] for out in (whole, resumed))
    for name in sa:
        np.testing.assert_allclose(sb[name].numpy(), sa[name].numpy(), rtol=1e-5, atol=1e-6)
    ckpt = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert ckpt["round"] == 3 and set(ckpt["optimizer"]) == {"m", "v"}
    # Scored and kept: the rounds' average (train.average_decay), carried across the resume; trained on: the latest.
    assert any(not torch.equal(ckpt["averaged"][n], ckpt["arrays"][n]) for n in ckpt["arrays"])

    # A new run from the trained model: its untrained round 0 is the trained model's test metrics.
    fresh = tmp_path / "fresh"
    merchant_fl(fresh, *RESUMABLE, "federation.rounds=0", f"init_from={whole}")
    c = json.loads((fresh / "metrics.json").read_text())
    for task, metrics in a["tasks"].items():
        assert c["rounds"][0]["tasks"][task] == pytest.approx(metrics, rel=1e-5, abs=1e-6)


def test_a_resume_with_no_round_left_keeps_the_average_it_last_scored(tmp_path):
    """select_round=last: the kept model of a resumed run that plays nothing is the checkpoint's average."""
    done, again = tmp_path / "done", tmp_path / "again"
    merchant_fl(done, "federation.rounds=3", "train.average_decay=0.5", "select_round=last")
    merchant_fl(again, "federation.rounds=3", "train.average_decay=0.5", "select_round=last", f"resume={done}")
    ckpt = torch.load(done / "checkpoint.pt", weights_only=True)
    first, second = (torch.load(out / "model.pt", weights_only=True)["state"] for out in (done, again))
    assert any(not torch.equal(ckpt["averaged"][n], ckpt["arrays"][n]) for n in ckpt["arrays"])
    for name, value in ckpt["averaged"].items():
        assert torch.equal(second[name], value) and torch.equal(first[name], value), name
