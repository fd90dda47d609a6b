"""Is a model eligible for a Blueberry-Nano leaderboard? Counts parameters in both frameworks, allocating nothing.

    python -m jax_nano.run.eligibility --model blueberry-151m
"""

import argparse
import sys
from dataclasses import dataclass

from configs.model import ELIGIBILITY_BANDS, PRESETS, ModelConfig, get_model_config
from jax_nano.core.cli import run_main


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
