"""Is a model eligible for a Blueberry-Nano leaderboard? Counts parameters in both frameworks, allocating nothing.
Also whether a run may be recorded at all (`record_refusal`, before it trains; `summary_refusal`, after).

    python -m jax_nano.run.eligibility --model blueberry-151m
"""

import argparse
import sys
from dataclasses import dataclass

from configs.model import ELIGIBILITY_BANDS, PRESETS, ModelConfig, get_model_config
from configs.tracks import TRACKS, Track
from jax_nano.core.cli import run_main
from jax_nano.core.report import n_matmul_params


def in_band(params: int, band_of: str) -> bool:
    """Whether `params` lies in the leaderboard band of the preset `band_of` (never, for a preset without one)."""
    lo, hi = ELIGIBILITY_BANDS.get(band_of) or (0, -1)
    return lo <= params <= hi


@dataclass(frozen=True)
class Eligibility:
    model: str
    jax_params: int
    torch_params: int
    band_of: str  # the preset whose band applies

    @property
    def eligible(self) -> bool:
        return self.jax_params == self.torch_params and in_band(self.jax_params, self.band_of)

    def report(self) -> str:
        lo_hi = ELIGIBILITY_BANDS.get(self.band_of)
        band = f"{lo_hi[0] / 1e6:.2f}M..{lo_hi[1] / 1e6:.2f}M" if lo_hi else "no leaderboard band"
        verdict = "ELIGIBLE" if self.eligible else "NOT eligible"
        return (f"{self.model}: JAX {self.jax_params:,} parameters, PyTorch {self.torch_params:,}; "
                f"band {band}: {verdict}")


def check(cfg: ModelConfig, band_of: str | None = None) -> Eligibility:
    """band_of names the preset whose band applies (default: cfg.name); a custom config is judged by it."""
    from jax_nano.model import count_params as jax_count
    from torch_ref.model import count_params as torch_count

    band_of = band_of or cfg.name
    return Eligibility(cfg.name, jax_count(cfg), torch_count(cfg), band_of)


# What makes a track the track: a record that changed one of them ran another race.
RULES = ("batch_size", "seq_len", "target_loss", "target_tokens", "max_tokens", "max_steps")


def band_of(track: Track) -> str:
    """The preset whose parameter band a run of `track` is judged by: the track's own model's."""
    return TRACKS[track.name].model if track.name in TRACKS else track.model


def record_refusal(track: Track) -> str | None:
    """Why a run of `track` as configured cannot enter the leaderboard, or None when it can; asked before training."""
    own = TRACKS.get(track.name)
    if own is None or not own.leaderboard:
        return f"track {track.name!r} has no leaderboard; --record needs a real track"
    changed = [f"{f.replace('_', '-')} {getattr(track, f)} (the track's: {getattr(own, f)})" for f in RULES
               if getattr(track, f) != getattr(own, f)]
    if changed:
        return f"the run changes the {track.name} track's rules: {'; '.join(changed)}; drop those flags"
    cfg, band = track.model_config, band_of(track)
    params = planned_params(cfg)
    if not in_band(params, band):
        lo, hi = ELIGIBILITY_BANDS[band]
        return (f"model {cfg.name} has {params:,} parameters, outside the {track.name} track's band "
                f"{lo / 1e6:.2f}M..{hi / 1e6:.2f}M ({band}); train {band} (drop --model)")
    return None


def planned_params(cfg: ModelConfig) -> int:
    """The parameter count from the config alone, before any framework builds the model: the matrices (the tied
    embedding once) plus every norm weight (two per block, q and k norms per head, the final one)."""
    return n_matmul_params(cfg) + cfg.n_layers * (2 * cfg.d_model + 2 * cfg.head_dim) + cfg.d_model


def summary_refusal(summary: dict) -> str | None:
    """Why a run's summary cannot enter the leaderboard (unfinished, target missed, out of band), or None."""
    if not summary.get("finished"):
        return f"run {summary.get('run')!r} did not finish"
    if summary.get("reached_target") is False:
        return f"run {summary.get('run')!r} did not reach the track's target loss"
    if not summary.get("eligible"):
        return f"run {summary.get('run')!r} is not eligible: {summary.get('params'):,} parameters out of the band"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="blueberry-151m", help=f"one of {', '.join(PRESETS)}")
    parser.add_argument("--fused-qkvo", action="store_true", help="upstream's single QKVO attention matrix")
    parser.add_argument("--band", default=None, help="judge against this preset's band (default: the model's own)")
    args = parser.parse_args(argv)
    cfg = get_model_config(args.model, **({"fused_qkvo": True} if args.fused_qkvo else {}))
    result = check(cfg, args.band)
    print(result.report())
    return 0 if result.eligible else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
