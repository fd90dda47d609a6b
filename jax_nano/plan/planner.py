"""A plan of one run on one card: does it fit, and if not, which levers make it fit (each compiled, not
guessed); kernels, FLOPs and compile time beside it. Written as results/plan-<target>-<track>.{md,json}.

Memory: the compiler's buffer plan of the train step (arguments + outputs - aliased + temporaries), plus what the
run keeps beside it: a loss track keeps the state before its last step (jax_nano/train.py), evaluation runs the
eval step beside the state, and two batches wait on the device. JAX's pool is XLA_PYTHON_CLIENT_MEM_FRACTION of
the card (the project's default 0.90, jax_nano/xla_flags.py); the rest holds the CUDA context and what lives
outside JAX. On a TPU, JAX's pool is the chip's whole HBM. Inside the pool the plan keeps ALLOWANCE free: the
allocator's fragmentation and the library workspaces a deviceless compile does not size.
"""

import dataclasses
import os
from pathlib import Path

from configs.errors import UserError
from configs.model import ModelConfig
from configs.tracks import Track
from jax_nano import xla_flags
from jax_nano.core import report
from jax_nano.plan import roofline
from jax_nano.plan.census import census
from jax_nano.plan.deviceless import compile_steps
from jax_nano.plan.peaks import card_named
from jax_nano.plan.targets import GIB

ALLOWANCE = GIB // 2
# Tried in order when the run does not fit: (name, track changes, devices). A batch change is a recipe change.
LEVERS = (
    ("--remat dots", {"remat": "dots"}, 1),
    ("--remat full", {"remat": "full"}, 1),
    ("--loss-chunk 2048", {"loss_chunk": 2048}, 1),
    ("--remat full --loss-chunk 2048", {"remat": "full", "loss_chunk": 2048}, 1),
    ("--mesh fsdp=2 (2 cards)", {}, 2),
    ("--mesh fsdp=4 (4 cards)", {}, 4),
    ("--batch-size half (changes the recipe)", {"batch_size": None}, 1),
)


class PlanError(UserError):
    """A plan that cannot be made or met; one line with the fix."""


def pool_bytes(target) -> int:
    """JAX's memory pool on one device of `target`."""
    if target.platform == "tpu":
        return target.memory_bytes
    fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION",
                                    xla_flags.DEFAULT_ENV["XLA_PYTHON_CLIENT_MEM_FRACTION"]))
    return int(fraction * target.memory_bytes)


def memory(compiled, track: Track, n_devices: int = 1) -> dict:
    """Bytes per device: the step's plan, what the run keeps beside it, and the peak. Each of the `n_devices`
    holds its share of every batch."""
    train, evaluate = compiled.train.memory_analysis(), compiled.evaluate.memory_analysis()
    batch = track.batch_size * track.seq_len * 4 // n_devices
    state = train.argument_size_in_bytes - batch
    step = (train.argument_size_in_bytes + train.output_size_in_bytes - train.alias_size_in_bytes
            + train.temp_size_in_bytes)
    kept = state if track.is_loss_track else 0
    states = state * (2 if track.is_loss_track else 1)
    evaluation = states + evaluate.temp_size_in_bytes + evaluate.output_size_in_bytes
    peak = max(step + kept, evaluation) + 2 * batch
    return {"arguments": train.argument_size_in_bytes, "outputs": train.output_size_in_bytes,
            "aliased": train.alias_size_in_bytes, "temporaries": train.temp_size_in_bytes, "train_step": step,
            "state": state, "kept_beside_step": kept, "eval_step_temporaries": evaluate.temp_size_in_bytes,
            "batches": 2 * batch, "peak": peak}


def assess(track: Track, cfg: ModelConfig, target, n_devices: int = 1) -> dict:
    """Compile for the target and read off memory (per device), fit, kernels and FLOPs."""
    n_devices = target.devices if target.platform == "tpu" else n_devices
    compiled = compile_steps(track, cfg, target, n_devices)
    mem = memory(compiled, track, n_devices)
    pool = pool_bytes(target)
    kernels = census(compiled.train.as_text())
    analytic = report.flops_per_token(compiled.cfg, track.seq_len) * track.tokens_per_step / n_devices
    counted = kernels["dot_flops"] + kernels["attention_flops"]
    card = card_named(target.name) if target.platform == "gpu" else None
    estimate = roofline.estimate(compiled.train.as_text(), card[1], target.bandwidth_bytes_s) if card else None
    if estimate:
        estimate["track"] = roofline.track_figures(estimate, track, compiled.cfg, target.name, n_devices)
    return {"memory": mem, "pool": pool, "allowance": ALLOWANCE, "margin": pool - ALLOWANCE - mem["peak"],
            "estimate": estimate, "fits": mem["peak"] + ALLOWANCE <= pool, "kernels": kernels,
            "eval_kernels": census(compiled.evaluate.as_text())["kernels"],
            "flops": {"counted": counted, "analytic": analytic, "ratio": counted / analytic if analytic else None},
            "compile_s": {"train": compiled.train_s, "eval": compiled.eval_s}, "n_devices": n_devices,
            "attention": "cudnn" if kernels["cudnn_attention"] else "xla", "platform": target.platform}


def lever_track(track: Track, changes: dict) -> Track:
    if "batch_size" in changes:
        return track.replace(batch_size=max(1, track.batch_size // 2))
    return track.replace(**changes)


def plan(track: Track, cfg: ModelConfig, target, log=print) -> dict:
    """The plan of `track` on one card (or one TPU slice), with the levers that make it fit when it does not."""
    log(f"[plan] compiling {track.name} for {target.name} (train and eval steps)")
    result = {"target": {"platform": target.platform, **dataclasses.asdict(target)}, "track": track.name,
              "model": track.model, "track_config": dataclasses.asdict(track),
              "default": assess(track, cfg, target), "levers": []}
    if not result["default"]["fits"]:
        state, pool = result["default"]["memory"]["state"], result["default"]["pool"]
        for name, changes, n in LEVERS:
            lever = lever_track(track, changes)
            if n > 1 and (target.platform == "tpu" or lever.batch_size % n):
                continue  # a TPU slice is planned whole: more chips is another --tpu
            # No lever but sharding shrinks the state (parameters and optimizer state): where even its share of
            # the state does not fit, compiling cannot change the answer.
            if state / n + ALLOWANCE > pool:
                result["levers"].append({"lever": name, "n_devices": n, "fits": False,
                                         "skipped": f"its state alone, {_gib(state / n)} per card, leaves no room"})
                continue
            log(f"[plan] does not fit; compiling with {name}")
            found = assess(lever, cfg, target, n)
            result["levers"].append({"lever": name, **found})
            if found["fits"]:
                break
    result["fits_with"] = "as it is" if result["default"]["fits"] else next(
        (lever["lever"] for lever in result["levers"] if lever["fits"]), None)
    return result


def _gib(n) -> str:
    return f"{n / GIB:.2f} GiB"


def render_markdown(result: dict) -> str:
    target, d = result["target"], result["default"]
    m = d["memory"]
    pool = ("the chip's HBM" if target["platform"] == "tpu"
            else "the card's memory x XLA_PYTHON_CLIENT_MEM_FRACTION")
    # A TPU runs the step as one program: its fusions are not launched one by one as a GPU's kernels are.
    ops = "fused ops" if target["platform"] == "tpu" else "kernels"
    lines = [f"# Plan: {result['track']} ({result['model']}) on {target['name']}", "",
             "The compiler's plan of the real steps compiled for the card on a machine without it (deviceless), "
             "not a measurement.", "",
             f"- fits: **{'yes' if d['fits'] else 'no'}**, margin {_gib(d['margin'])} per device (pool "
             f"{_gib(d['pool'])} = {pool}, allowance {_gib(d['allowance'])}; {d['n_devices']} device(s))",
             f"- peak {_gib(m['peak'])}: train step {_gib(m['train_step'])} (arguments {_gib(m['arguments'])}, "
             f"outputs {_gib(m['outputs'])}, aliased {_gib(m['aliased'])}, temporaries {_gib(m['temporaries'])}), "
             f"kept beside it {_gib(m['kept_beside_step'])}, eval step temporaries "
             f"{_gib(m['eval_step_temporaries'])}",
             f"- attention: {d['attention']}; {ops} per train step {d['kernels']['kernels']:,} "
             f"({d['kernels']['gemms']:,} GEMMs), eval step {d['eval_kernels']:,}; custom calls "
             f"{d['kernels']['custom_calls'] or 'none'}",
             f"- FLOPs per step: counted {d['flops']['counted']:.4g}, analytic (MFU formula) "
             f"{d['flops']['analytic']:.4g}, ratio {d['flops']['ratio']:.3f}",
             f"- compile: train {d['compile_s']['train']:.1f} s, eval {d['compile_s']['eval']:.1f} s"]
    if d.get("estimate"):
        lines += roofline.render(d["estimate"], d["estimate"]["track"], target["name"], result["track"])
    if result["levers"]:
        lines += ["", "| lever | cards | peak per card | fits |", "|---|---|---|---|"]
        lines += [f"| {lv['lever']} | {lv['n_devices']} | "
                  f"{lv['skipped'] if 'skipped' in lv else _gib(lv['memory']['peak'])} | "
                  f"{'yes' if lv['fits'] else 'no'} |" for lv in result["levers"]]
    return "\n".join(lines) + "\n"


def write(result: dict, results_dir) -> dict:
    stem = f"{results_dir}/plan-{result['target_key']}-{result['track']}"
    files = {"md": f"{stem}.md", "json": f"{stem}.json"}
    report.write_json_atomic(files["json"], result)
    markdown = render_markdown(result)
    estimate = result["default"].get("estimate")
    if estimate:
        files["png"] = f"{stem}.png"
        roofline.plot(estimate, f"{result['track']} on {result['target']['name']}", files["png"])
        markdown += f"\n![the estimate per class]({Path(files['png']).name})\n"
    report.write_text_atomic(files["md"], markdown)
    return files
