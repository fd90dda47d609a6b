"""A resume under other settings names every field that differs; a longer budget that changes no step is allowed."""

import pytest

from configs.model import get_model_config
from jax_nano.core.checkpoints import CheckpointError, check_fingerprint, fingerprint
from tests import toy


def fp(**changes):
    optim = changes.pop("optim", {})
    track = toy.toy_track("store", **changes)
    track = track.replace(optim=track.optim.replace(**optim)) if optim else track
    return fingerprint(track, get_model_config(track.model))


def test_every_differing_field_is_named_with_both_values():
    with pytest.raises(CheckpointError) as info:
        check_fingerprint(fp(), fp(batch_size=4, optim={"muon_lr": 0.03}), "runs/r/checkpoints/2")
    message = str(info.value)
    assert "batch_size: checkpoint 8, now 4" in message and "muon_lr: checkpoint 0.02, now 0.03" in message
    assert "\n" not in message and "total_steps" not in message
    with pytest.raises(CheckpointError, match="precision: checkpoint float32, now bf16"):
        check_fingerprint(fp(), fp(precision="bf16"), "x")
    with pytest.raises(CheckpointError, match="model.d_model: checkpoint"):
        check_fingerprint(fp(), fp(model="small"), "x")


def test_a_budget_change_is_allowed_only_where_no_step_taken_changes():
    assert check_fingerprint(fp(), fp(), "x") is None
    assert check_fingerprint(fp(steps=30), fp(steps=60), "x") == "extending the run's budget from 30 to 60 steps"
    assert check_fingerprint(fp(max_steps=10), fp(), "x") == "extending the run's budget from 10 to 30 steps"
    with pytest.raises(CheckpointError, match=r"total_steps: checkpoint 30, now 60 \(a step budget changes this "):
        check_fingerprint(fp(optim={"schedule": "cosine"}), fp(steps=60, optim={"schedule": "cosine"}), "x")
    with pytest.raises(CheckpointError, match="total_steps: checkpoint 30, now 60"):
        check_fingerprint(fp(optim={"warmup_ratio": 0.1}), fp(steps=60, optim={"warmup_ratio": 0.1}), "x")


def test_a_checkpoint_without_stored_settings_is_compared_by_digest():
    old = {k: v for k, v in fp().items() if k != "settings"}
    assert check_fingerprint(old, fp(steps=30), "x") is None
    with pytest.raises(CheckpointError, match="from another run .* it stores no settings to compare"):
        check_fingerprint(old, fp(batch_size=4), "x")
