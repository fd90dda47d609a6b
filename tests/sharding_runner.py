"""Runs `tiny` speedruns on a mesh of fake CPU devices for tests/test_sharding.py, in a subprocess whose
XLA_FLAGS set the device count (the pytest process already has its one device). Prints one JSON line.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/sharding_runner.py '{"store": ..., ...}'

Spec: {"store": path, "tmp": dir, "steps": 20, "runs": [{"name", "mesh", "stop_after", "resume"}],
"probe": [mesh, ...]}. Each run reports its loss curve (results/<name>.jsonl) and summary fields; each probe
mesh reports the shardings of a few parameters and optimizer-state arrays of a fresh trainer.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

from configs.model import get_model_config  # noqa: E402
from jax_nano import sharding  # noqa: E402
from jax_nano.run.speedrun import speedrun  # noqa: E402
from jax_nano.train import JaxTrainer  # noqa: E402
from tests.toy import toy_track  # noqa: E402

PROBED = {
    "embedding": ("params", "token_embedding", "embedding"),
    "q_proj": ("params", "transformer_blocks", "attention", "q_proj", "kernel"),
    "gate_proj": ("params", "transformer_blocks", "feed_forward", "gate_proj", "kernel"),
    "norm1": ("params", "transformer_blocks", "norm1", "scale"),
}


def describe_array(a) -> dict:
    spec = getattr(a.sharding, "spec", None)
    return {"shape": list(a.shape), "spec": [None if s is None else str(s) for s in spec] if spec is not None else None,
            "shard_shapes": sorted({tuple(s.data.shape) for s in a.addressable_shards}),
            "n_devices": len(a.sharding.device_set)}


def probe(track, mesh_spec: str) -> dict:
    trainer = JaxTrainer(track, get_model_config(track.model), mesh=sharding.make_mesh(mesh_spec))
    state = trainer.place.initial()
    out = {}
    for name, path in PROBED.items():
        node = state
        for key in path:
            node = getattr(node, key) if key == "params" else node[key]
        out[name] = describe_array(jax.tree.leaves(node)[0])
    # Optimizer state follows its parameter: every array of the state with the embedding's shape.
    emb_shape = tuple(out["embedding"]["shape"])
    out["opt_state_like_embedding"] = [describe_array(a) for a in jax.tree.leaves(state.opt_state)
                                       if tuple(a.shape) == emb_shape]
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    tmp = Path(spec["tmp"])
    track = toy_track(spec["store"], spec.get("steps", 20), checkpoint_every=spec.get("checkpoint_every", 0))
    result = {"device_count": jax.device_count(), "runs": {}, "probes": {}}
    for run in spec.get("runs", []):
        summary = speedrun(track, run_name=run["name"], results_dir=tmp / "results", runs_dir=tmp / "runs",
                           show_bar=False, mesh=run.get("mesh"), resume=run.get("resume", False),
                           stop_after=run.get("stop_after"))
        lines = (tmp / "results" / f"{run['name']}.jsonl").read_text().splitlines()
        curve = [r["loss"] for r in map(json.loads, lines) if "loss" in r]
        keep = ("finished", "next_step", "steps", "n_devices", "n_processes", "mesh", "compiles_during_run",
                "val_loss")
        result["runs"][run["name"]] = {"losses": curve, **{k: summary[k] for k in keep if k in summary}}
    for mesh_spec in spec.get("probe", []):
        result["probes"][mesh_spec] = probe(track, mesh_spec)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
