"""What a roofline estimate needs of a card beyond its compile description (jax_nano/plan/targets.py holds its
memory bandwidth): its peak arithmetic rates by the precision a matmul runs in, and the cost of one kernel launch;
and upstream's published RTX 4090 records to set an estimate beside (SPEC section 3).

Peaks are the vendors' published dense figures (no sparsity): bf16 is the tensor-core rate with float32
accumulation (what a bf16 matmul with a float32 accumulator gets; GeForce cards run it at half their float16-
accumulate rate); tf32 is the tensor-core rate a float32 matmul gets at JAX's default precision on the GPU; fp32
is the plain float32 rate (a float32 matmul at "highest" precision, elementwise arithmetic).
"""

import dataclasses

from jax_nano.plan.targets import GPUS


@dataclasses.dataclass(frozen=True)
class Peaks:
    bf16: float  # FLOP/s
    tf32: float
    fp32: float
    source: str


_ADA_WHITEPAPER = "NVIDIA Ada GPU architecture whitepaper, appendix A (GeForce RTX 4090)"
_H100_DATASHEET = "NVIDIA H100 Tensor Core GPU datasheet (SXM5)"

# Keyed as jax_nano/plan/targets.py GPUS.
PEAKS = {
    "rtx4090": Peaks(165.2e12, 82.6e12, 82.6e12, _ADA_WHITEPAPER),
    "rtx3090": Peaks(71e12, 35.6e12, 35.6e12, "NVIDIA Ampere GA102 GPU architecture whitepaper (GeForce RTX 3090)"),
    "l4": Peaks(121e12, 60e12, 30.3e12, "NVIDIA L4 Tensor Core GPU datasheet"),
    "a100-40gb": Peaks(312e12, 156e12, 19.5e12, "NVIDIA A100 Tensor Core GPU datasheet (SXM4)"),
    "a100-80gb": Peaks(312e12, 156e12, 19.5e12, "NVIDIA A100 Tensor Core GPU datasheet (SXM4)"),
    "h100": Peaks(989e12, 494.7e12, 66.9e12, _H100_DATASHEET),
    "h200": Peaks(989e12, 494.7e12, 66.9e12, "NVIDIA H200 Tensor Core GPU datasheet (SXM)"),
}

# An assumption, not a published figure: the time one kernel costs beyond its work (launch, the ramp up and the
# tail of its waves), a few microseconds on current NVIDIA cards. A profile measures it as the gaps between
# kernels (jax_nano/bench/profile.py): the first GPU run replaces this guess.
LAUNCH_S = 3e-6

# Upstream's RTX 4090 records, SPEC section 3: (Active Training Time in seconds, tokens trained). A loss track has
# no step budget of its own; its estimate runs as many steps as its record took.
UPSTREAM_4090 = {
    "4.5loss": (182.0, 6_086_656),
    "3.5loss": (547.0, 18_767_872),
    "8M": (86.178, 489 * 8 * 2048),
    "20M": (199.165, 1221 * 8 * 2048),
    "100M": (977.221, 6104 * 8 * 2048),
}


def card_named(device_name: str):
    """(the card's compile description, its peaks) for the name a listed card reports; None for any other device
    (a card of one's own, a TPU, a CPU)."""
    return next(((card, PEAKS[key]) for key, card in GPUS.items() if card.name == device_name), None)
