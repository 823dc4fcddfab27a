"""Checkpoints (server_app/checkpoint.py): what they hold survives the file, writes are atomic, a resume
must keep the config, and init_from loads a trained model's arrays."""

import math

import numpy as np
import pytest
import torch

from core.errors import InputError
from server_app.checkpoint import (CHECKPOINT, Checkpoint, check_resumable, initial_arrays, read_checkpoint,
                                   restore_rng, rng_state, trained_state, write_checkpoint)
from server_app.outputs import RoundRecord
from tasks.selection import RoundKeeper

ARRAYS = {"emb": np.arange(6, dtype=np.float32).reshape(3, 2), "steps": np.array([4], np.int64),
          "bias": np.array(0.25, np.float32),  # 0-d, as a task's global bias
          "loss_weighting.log_var": np.array([0.5, -0.5], np.float32)}
CFG = {"seed": 0, "model": {"name": "mmoe"}, "federation": {"rounds": 2, "round_timeout_s": 60}, "resume": None}


def checkpoint(server_round=2):
    return Checkpoint(
        round=server_round, arrays=ARRAYS, optimizer={"m": {"emb": np.full((3, 2), 0.25)}},
        rounds=[RoundRecord(0, {"click": {"auc": 0.5}}), RoundRecord(1, {"click": {"auc": 0.6}}, {"click": 0.3},
                                                                     {"click": {"logloss": math.nan}})],
        keeper={"round": 1, "latest": 2, "loss": 0.75}, kept_arrays={"emb": np.ones((3, 2), np.float32)},
        plan='{"tasks": ["click"]}', merchant_indices={"m0": 0, "m1": 1}, failures=[{"round": 1, "node": 7,
        "merchant": "m1", "reason": "boom"}], config=CFG, rng=rng_state(),
        averaged={"emb": np.full((3, 2), 0.5, np.float32)})


def test_a_checkpoint_reads_back_as_written(tmp_path):
    write_checkpoint(tmp_path / CHECKPOINT, checkpoint())
    back = read_checkpoint(tmp_path)  # a run's folder or the file itself
    assert back.round == 2 and back.plan == '{"tasks": ["click"]}' and back.config == CFG
    for name, value in ARRAYS.items():
        assert back.arrays[name].dtype == value.dtype and back.arrays[name].shape == value.shape
        assert np.array_equal(back.arrays[name], value)
    np.testing.assert_array_equal(back.optimizer["m"]["emb"], np.full((3, 2), 0.25))
    assert back.rounds[1].train_loss == {"click": 0.3} and math.isnan(back.rounds[1].validation["click"]["logloss"])
    assert back.keeper == {"round": 1, "latest": 2, "loss": 0.75} and back.merchant_indices == {"m0": 0, "m1": 1}
    assert back.failures[0]["merchant"] == "m1" and read_checkpoint(tmp_path / CHECKPOINT).round == 2
    np.testing.assert_array_equal(back.averaged["emb"], np.full((3, 2), 0.5, np.float32))


def test_the_rng_state_is_restored(tmp_path):
    write_checkpoint(tmp_path / CHECKPOINT, checkpoint())
    expected = (np.random.rand(), torch.rand(1).item())
    np.random.rand(5), torch.rand(5)
    restore_rng(read_checkpoint(tmp_path).rng)
    assert (np.random.rand(), torch.rand(1).item()) == expected


def test_a_crash_mid_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT
    write_checkpoint(path, checkpoint(1))

    def crash(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(path, checkpoint(2))
    assert read_checkpoint(path).round == 1


def test_unreadable_or_missing_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="no checkpoint.pt there"):
        read_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read it"):
        read_checkpoint(tmp_path)


def test_resume_allows_more_rounds_but_no_other_change():
    check_resumable(CFG, {**CFG, "federation": {"rounds": 4, "round_timeout_s": 5}, "resume": "/x"}, "/x")
    with pytest.raises(InputError, match=r"model.name='mmoe' there, 'ple' now"):
        check_resumable(CFG, {**CFG, "model": {"name": "ple"}}, "/x")


def test_init_from_takes_a_trained_models_arrays_and_checks_their_shapes(tmp_path):
    torch.save({"mode": "federated", "state": {k: torch.from_numpy(np.array(v + 1)) for k, v in ARRAYS.items()}},
               tmp_path / "model.pt")
    trained = trained_state(tmp_path)
    fresh = {k: np.zeros_like(v) for k, v in ARRAYS.items()}
    out = initial_arrays(fresh, trained, tmp_path)
    np.testing.assert_array_equal(out["emb"], ARRAYS["emb"] + 1)
    other_weighting = {**{k: v for k, v in fresh.items() if not k.startswith("loss_weighting.")},
                       "loss_weighting.w": np.ones(3, np.float32)}
    assert initial_arrays(other_weighting, trained, tmp_path)["loss_weighting.w"].tolist() == [1, 1, 1]
    with pytest.raises(InputError, match=r"'emb' is shaped \[3, 2\], the new model's \[4, 2\]"):
        initial_arrays({**fresh, "emb": np.zeros((4, 2), np.float32)}, trained, tmp_path)
    write_checkpoint(tmp_path / "ckpt" / CHECKPOINT, checkpoint())
    np.testing.assert_array_equal(trained_state(tmp_path / "ckpt")["emb"], ARRAYS["emb"])
    torch.save({"mode": "local", "state": {"m0": {"emb": torch.zeros(1)}}}, tmp_path / "local.pt")
    with pytest.raises(InputError, match="one per merchant"):
        trained_state(tmp_path / "local.pt")


@pytest.mark.parametrize("rule", ["best_val", "last"])
def test_a_restored_round_keeper_goes_on_as_the_original(rule):
    losses = [1.0, 0.8, 0.9, 0.7, 0.95, 0.96]
    original = RoundKeeper(rule, patience=2)
    for r, loss in enumerate(losses[:3]):
        original.offer(r, loss, lambda r=r: r)
    restored = RoundKeeper(rule, patience=2)
    restored.restore(original.progress(), original.best_state, lambda: 2)
    for keeper in (original, restored):
        for r, loss in enumerate(losses[3:], start=3):
            keeper.offer(r, loss, lambda r=r: r)
    assert (restored.round, restored.state, restored.stop) == (original.round, original.state, original.stop)
