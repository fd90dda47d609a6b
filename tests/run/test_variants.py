"""Variants as data: their flags, their place in the summary and in the checkpoint fingerprint, and bad input."""

import argparse

import pytest

from configs import variants
from configs.model import ConfigError, get_model_config
from jax_nano.core.checkpoints import CheckpointError, check_fingerprint, fingerprint
from jax_nano.core.cli import add_track_flags, track_from_args
from jax_nano.run.speedrun import speedrun
from tests import toy


def parse(*argv):
    p = argparse.ArgumentParser()
    p.add_argument("--track", default="smoke")
    add_track_flags(p)
    p.set_defaults(resume=False, init_from=None)
    return track_from_args(p.parse_args(list(argv)))


def test_flags_and_names_set_the_config_fields():
    base = parse()
    assert variants.active(base) == {} and base.model_config.unet_skips is False and base.optim.muon_drop == 0.0
    for argv in (["--unet-skips", "--muon-drop", "0.1"], ["--variant", "unet-skips", "--variant", "muon-drop=0.1"]):
        track = parse(*argv)
        assert variants.active(track) == {"unet-skips": True, "muon-drop": 0.1}
        assert track.model_config.unet_skips is True and track.optim.muon_drop == 0.1
        assert variants.describe_values(variants.values(track)) == "unet-skips, muon-drop 0.1"


@pytest.mark.parametrize("argv,needle", [
    (["--variant", "unet-skip"], "unknown variant 'unet-skip'; choose one of unet-skips, muon-drop"),
    (["--muon-drop", "1.0"], "muon_drop=1.0 is outside [0, 1)"),
    (["--variant", "muon-drop=-0.5"], "muon_drop=-0.5 is outside [0, 1)"),
    (["--variant", "muon-drop"], "needs a value"),
])
def test_bad_variants_are_one_line_errors(argv, needle):
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    assert needle in str(info.value) and "\n" not in str(info.value)


def fp(track):
    return fingerprint(track, track.model_config)


def test_each_variant_changes_the_fingerprint_and_none_leaves_it_as_before():
    base = toy.toy_track("store")
    unet, drop = variants.apply(base, {variants.VARIANTS["unet-skips"]: True}), base.replace(
        optim=base.optim.replace(muon_drop=0.1))
    digests = {fp(t)["digest"] for t in (base, unet, drop)}
    assert len(digests) == 3
    # Without a variant no variant key is stored: checkpoints from before variants existed still match.
    assert not set(variants.off_settings()) & set(fp(base)["settings"])
    with pytest.raises(CheckpointError, match=r"model.unet_skips: checkpoint True, now False"):
        check_fingerprint(fp(unet), fp(base), "x")
    with pytest.raises(CheckpointError, match=r"muon_drop: checkpoint 0.0, now 0.1"):
        check_fingerprint(fp(base), fp(drop), "x")
    assert check_fingerprint(fp(unet), fp(unet), "x") is None


@pytest.mark.long  # a toy training; the fingerprint check itself is tested above in the quick suite
def test_a_checkpoint_of_a_variant_does_not_resume_as_the_baseline(toy_track, tmp_path):
    kw = dict(results_dir=tmp_path / "results", runs_dir=tmp_path / "runs", show_bar=False)
    unet = variants.apply(toy_track(max_steps=2), {variants.VARIANTS["unet-skips"]: True})
    summary = speedrun(unet, run_name="u", **kw)
    assert summary["variants"] == {"unet-skips": True, "muon-drop": 0.0}
    assert summary["track_config"]["model_changes"] == (("unet_skips", True),)
    with pytest.raises(CheckpointError, match="model.unet_skips: checkpoint True, now False"):
        speedrun(toy_track(max_steps=2), run_name="u", resume=True, **kw)
    assert get_model_config("tiny").unet_skips is False
