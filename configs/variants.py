"""Variants: named changes to the model or the optimizer that a speedrunner tries, each one field of a config.

A variant is data: a field of ModelConfig ("model.<field>") or OptimConfig ("optim.<field>"), off at its default.
Its name is the field's with dashes, and so is its flag (`--unet-skips`, `--muon-drop 0.1`); `--variant NAME` or
`--variant NAME=VALUE` names it too. It is recorded in every run summary and, when on, in the checkpoint
fingerprint (jax_nano/core/checkpoints.py), so a checkpoint of one cannot resume as another. Each framework
implements it in one module of its own (jax_nano/variants/, torch_ref/variants/); docs/variants.md shows how to
add one.
"""

from dataclasses import dataclass

from configs.model import ConfigError
from configs.tracks import Track


@dataclass(frozen=True)
class Variant:
    setting: str  # "model.<field>" or "optim.<field>"
    off: object  # the field's default, at which the variant is off
    doc: str

    @property
    def field(self) -> str:
        return self.setting.split(".", 1)[1]

    @property
    def name(self) -> str:
        return self.field.replace("_", "-")

    @property
    def kind(self) -> type:
        return type(self.off)

    @property
    def fingerprint_key(self) -> str:
        """Its name among a checkpoint's settings: `model.<field>` for the model, the bare field for the optimizer."""
        return self.setting if self.setting.startswith("model.") else self.field


VARIANTS = {v.name: v for v in (
    Variant("model.unet_skips", False,
            "U-Net skips (upstream): the outputs of the first n_layers // 2 blocks are added, last in first out, to "
            "the outputs of the blocks after them"),
    Variant("optim.muon_drop", 0.0,
            "Drop-Muon (upstream): each entry of Muon's orthogonalized update is zeroed with probability P, the "
            "rest kept unscaled; the masks come from the run's seed"),
)}


def value(track: Track, variant: Variant):
    if variant.setting.startswith("model."):
        return dict(track.model_changes).get(variant.field, variant.off)
    return getattr(track.optim, variant.field)


def values(track: Track) -> dict:
    """Every variant's value in `track`, by name."""
    return {name: value(track, v) for name, v in VARIANTS.items()}


def active(track: Track) -> dict:
    """The variants `track` turns on, by name."""
    return {name: v for name, v in values(track).items() if v != VARIANTS[name].off}


def describe_values(named: dict) -> str:
    """'unet-skips, muon-drop 0.1' for the variants of `named` ({name: value}, as a summary records them) that are
    on; 'none' when none is."""
    on = {n: v for n, v in named.items() if n in VARIANTS and v != VARIANTS[n].off}
    return ", ".join(n if v is True else f"{n} {v:g}" for n, v in on.items()) or "none"


def parse(spec: str) -> tuple[Variant, object]:
    """`NAME` (a switch on) or `NAME=VALUE` -> (its Variant, the value); an unknown name is a one-line error."""
    name, _, text = spec.partition("=")
    variant = VARIANTS.get(name.strip())
    if variant is None:
        raise ConfigError(f"unknown variant {name.strip()!r}; choose one of {', '.join(VARIANTS)} "
                          "(docs/variants.md shows how to add one)")
    if variant.kind is bool:
        if text and text.strip().lower() not in ("true", "on", "1"):
            raise ConfigError(f"variant {variant.name} is a switch; write {variant.name}, not {spec!r}")
        return variant, True
    if not text:
        raise ConfigError(f"variant {variant.name} needs a value: {variant.name}=VALUE")
    try:
        return variant, variant.kind(text)
    except ValueError:
        raise ConfigError(f"variant {variant.name}: {text!r} is not a {variant.kind.__name__}") from None


def apply(track: Track, changes: dict) -> Track:
    """`track` with the variants of `changes` ({Variant: value}) set; the configs validate the values."""
    model = dict(track.model_changes)
    optim = {}
    for variant, v in changes.items():
        (model if variant.setting.startswith("model.") else optim)[variant.field] = v
    if optim:
        track = track.replace(optim=track.optim.replace(**optim))
    track = track.replace(model_changes=tuple(sorted(model.items())))
    track.model_config  # noqa: B018 (the model config validates the model's fields now, not when a run starts)
    return track


def off_settings() -> dict:
    """Every variant off, as a checkpoint's settings name them (a checkpoint stores only the variants it had on)."""
    return {v.fingerprint_key: v.off for v in VARIANTS.values()}
