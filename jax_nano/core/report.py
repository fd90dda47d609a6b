"""Run reporting shared by both trainers: durations, FLOPs and MFU (SPEC section 5), atomic files, metrics, plots.

Framework-neutral on purpose (numpy and matplotlib only) so the PyTorch reference reports with the same code.
"""

import io
import json
import math
import os
import re
import secrets
from pathlib import Path

import numpy as np

from jax_nano.core.safe_paths import open_nofollow, refuse_symlink
from jax_nano.core.storage import writing

# Peak dense bf16 FLOP/s (no sparsity) by device-name fragment, SPEC section 5. H100 PCIe and NVL are slower
# parts that share the "H100" fragment, so they have their own entries; the longest matching fragment wins.
PEAK_BF16_FLOPS = {
    "RTX 4090": 165e12,
    "L4": 121e12,
    "A100": 312e12,
    "H100": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
}

_DURATION_RE = re.compile(r"(?:(\d+)h )?(?:(\d+)m )?(\d+)s (\d+)ms")


def _format_ms(total_ms: int) -> str:
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, ms = divmod(rest, 1000)
    parts = [f"{hours}h"] if hours else []
    if hours or minutes:
        parts.append(f"{minutes}m")
    parts += [f"{seconds}s", f"{ms}ms"]
    return " ".join(parts)


def format_duration(seconds: float) -> str:
    """The leaderboard's format: '1m 26s 178ms', '2h 37m 5s 12ms', '0s 512ms' (rounded to the millisecond)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {seconds}")
    return _format_ms(round(seconds * 1000))


def parse_duration(text: str) -> float:
    """Inverse of format_duration; only the canonical form is accepted so a hand-typed '0m 90s 0ms' is caught."""
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a duration like '1m 26s 178ms': {text!r}")
    hours, minutes, seconds, ms = (int(g or 0) for g in match.groups())
    total_ms = ((hours * 60 + minutes) * 60 + seconds) * 1000 + ms
    if _format_ms(total_ms) != text:
        raise ValueError(f"non-canonical duration {text!r}; write {_format_ms(total_ms)!r}")
    return total_ms / 1000


def block_matrices(cfg) -> list[tuple[int, int]]:
    """The (in, out) shape of every matrix of every block, the matrices Muon orthogonalizes: the attention
    projections (q and o d x d, k and v d x kv_dim, or their one fused matrix, which upstream's Muon takes whole)
    and the MLP's (swiglu: gate, up, down; relu2: up, down)."""
    d = cfg.d_model
    attention = ([(d, 2 * d + 2 * cfg.kv_dim)] if cfg.fused_qkvo
                 else [(d, d), (d, cfg.kv_dim), (d, cfg.kv_dim), (d, d)])
    mlp = [(d, cfg.d_ff)] * (2 if cfg.mlp == "swiglu" else 1) + [(cfg.d_ff, d)]
    return (attention + mlp) * cfg.n_layers


def n_matmul_params(cfg) -> int:
    """All matrix parameters including the tied embedding/head (SPEC section 5); norms and biases excluded.

    The fused QKVO matrix holds exactly the four separate projections, so fused_qkvo does not change the count.
    """
    return sum(d_in * d_out for d_in, d_out in block_matrices(cfg)) + cfg.vocab_size * cfg.d_model


def flops_per_token(cfg, seq_len: int) -> int:
    """Training FLOPs per token: 6 per matrix parameter plus causal attention counted at half (SPEC section 5)."""
    return 6 * n_matmul_params(cfg) + 6 * cfg.n_layers * seq_len * cfg.d_model


def ortho_flops_per_step(cfg, steps: int) -> int:
    """Muon's orthogonalization FLOPs in one optimizer step, whatever the batch, as upstream multiplies them out:
    each of `steps` iterations on an m x n matrix (m its short side) takes the m x m Gram matrix (2 m^2 n), its
    square (2 m^3) and their polynomial times the matrix (2 m^2 n)."""
    return steps * sum(4 * m * m * n + 2 * m**3 for m, n in (sorted(shape) for shape in block_matrices(cfg)))


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a device from its name; None for a CPU or a device not in PEAK_BF16_FLOPS."""
    name = " ".join(device_name.upper().split())
    for fragment in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        # Whole-token match: "L4" must not match an "L40S", nor "H200" a "GH200".
        if re.search(rf"(?<![A-Z0-9]){re.escape(fragment.upper())}(?![A-Z0-9])", name):
            return PEAK_BF16_FLOPS[fragment]
    return None


def mfu(tokens_per_s: float, cfg, seq_len: int, device_name: str) -> float | None:
    """Model FLOPs utilisation as a fraction of the device's peak; None where the peak is unknown."""
    peak = peak_flops(device_name)
    return None if peak is None else tokens_per_s * flops_per_token(cfg, seq_len) / peak


def _write_bytes_atomic(path, data: bytes) -> None:
    # A temp file in the target's directory, so os.replace is a same-filesystem rename: readers (and a crash)
    # see either the old file or the new one, never a partial write.
    path = Path(path)
    refuse_symlink(path)  # the rename would replace the link; refused so a planted link is seen, not silently lost
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 lets the umask decide the mode, as for an ordinary new file (tempfile would give 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    _write_bytes_atomic(path, data)


def write_text_atomic(path, text: str) -> None:
    _write_bytes_atomic(path, text.encode("utf-8"))


def _json_default(obj):
    # Trainers hand over numpy and jax scalars/arrays; both convert through numpy.
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


class MetricsLog:
    """JSON lines, one dict per line, flushed per line so a killed run keeps everything it logged.

    append=True continues an existing log (a resumed run), first dropping the records of steps >= `before_step`:
    those came after the checkpoint the run resumes from and will be logged again. Otherwise the file starts empty.
    A write the file system refuses (full, read-only) is a one-line StorageError naming the file.
    """

    def __init__(self, path, append: bool = False, before_step: int | None = None):
        self.path = Path(path)
        refuse_symlink(self.path, "result file")
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if append and before_step is not None and self.path.exists():
                kept = [r for r in read_metrics(self.path) if r.get("step", -1) < before_step]
                write_text_atomic(self.path, "".join(json.dumps(r, default=_json_default) + "\n" for r in kept))
            mode = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
            self._file = os.fdopen(open_nofollow(self.path, mode), "a" if append else "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        with writing(self.path):
            self._file.write(json.dumps(record, default=_json_default) + "\n")
            self._file.flush()

    def close(self) -> None:
        with writing(self.path):
            self._file.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path) -> list[dict]:
    """The records of a MetricsLog; a last line cut short by a crash is dropped rather than failing the read."""
    # Every complete record ends with a newline, so whatever follows the last one was never finished.
    lines = Path(path).read_text(encoding="utf-8").split("\n")[:-1]
    return [json.loads(line) for line in lines if line]


def plot_curves(series: dict, path, xlabel: str, ylabel: str = "train loss", title: str | None = None,
                hline: float | None = None) -> None:
    """One PNG, one line per series ({"jax": (xs, ys), "torch": (xs, ys)}), an optional dashed target line."""
    if not series:
        raise ValueError("plot_curves needs at least one series")
    # The Figure API with the Agg canvas touches no pyplot global state and needs no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise ValueError(f"series {label!r}: {len(xs)} x values but {len(ys)} y values")
        ax.plot(xs, ys, label=label, linewidth=1.2)
    if hline is not None:
        ax.axhline(hline, linestyle="--", color="gray", linewidth=1, label=f"target {hline:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _write_bytes_atomic(path, buf.getvalue())
