"""A bundle: one folder that runs the project on an offline target (jax_nano/bundle/targets.py).

    src/              the project's source (no tests, no .git)
    wheels/           what the target lacks, for its Python and platform (jax_nano/bundle/wheels.py)
    processed_data/   the prepared token stores
    tokenizer/        tokenizer.json, which `tokenizers` loads directly (no GGUF on the target)
    run.sh            installs the wheels into site/ and runs a job (jax_nano/bundle/job.py)
    bundle.json       the target, what was kept and carried and why, the size of every part

It is assembled in a hidden folder beside `out` and renamed into place once complete and within `max_mb`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from jax_nano.bundle import wheels
from jax_nano.bundle.job import JOBS
from jax_nano.bundle.targets import BundleError, Target
from jax_nano.data import tokenizer
from jax_nano.data.token_store import open_store

SOURCE_DIRS = ("configs", "jax_nano", "torch_ref", "scripts")
SOURCE_FILES = ("pyproject.toml", "constraints.txt", "README.md", "DATA.md", "LEADERBOARD.md", "PERFORMANCE.md")
TEMPLATE = Path(__file__).with_name("run.sh")
MB = 1e6


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def copy_source(root: Path, dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCE_DIRS:
        shutil.copytree(root / name, dest / name, ignore=ignore)
    for name in SOURCE_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)


def check_stores(data: list) -> dict:
    """name -> path of each token store to ship, each opened and verified end to end first."""
    stores = {}
    for path in map(Path, data):
        store = open_store(path)
        name = store.path.resolve().name
        if name in stores:
            raise BundleError(f"two --data stores are named {name!r} ({stores[name]} and {path}); a bundle keeps "
                              "them as processed_data/NAME, so rename one")
        stores[name] = path
    return stores


def write_run_sh(dest: Path, target: Target) -> None:
    text = TEMPLATE.read_text().replace("@PYTHON@", target.python_minor).replace("@JOBS@", " ".join(JOBS))
    dest.write_text(text)
    dest.chmod(0o755)


def sizes(bundle: Path) -> dict:
    """Bytes per part: src, tokenizer, each store, each wheel, and run.sh with bundle.json as "scripts"."""
    parts = {name: folder_bytes(bundle / name) for name in ("src", "tokenizer") if (bundle / name).exists()}
    for group in ("processed_data", "wheels"):
        if (bundle / group).is_dir():
            parts.update({f"{group}/{p.name}": folder_bytes(p) for p in sorted((bundle / group).iterdir())})
    parts["run.sh"] = folder_bytes(bundle / "run.sh")
    return parts


def size_report(parts: dict) -> str:
    total = sum(parts.values())
    groups = {}
    for name, n in parts.items():
        groups.setdefault(name.split("/")[0], []).append((name, n))
    lines = [f"{total / MB:8.1f} MB  in all"]
    for group, members in sorted(groups.items(), key=lambda g: -sum(n for _, n in g[1])):
        size = sum(n for _, n in members)
        count = f" ({len(members)})" if group in ("wheels", "processed_data") else ""
        lines.append(f"{size / MB:8.1f} MB  {group}{count}")
        if len(members) > 1 or members[0][0] != group:
            lines += [f"{n / MB:8.1f} MB    {name}" for name, n in sorted(members, key=lambda m: -m[1])]
    return "\n".join(lines)


def check_limit(parts: dict, max_mb: float | None, stage: str) -> None:
    total = sum(parts.values())
    if max_mb is None or total <= max_mb * MB:
        return
    largest = ", ".join(f"{name} {n / MB:.1f} MB" for name, n in sorted(parts.items(), key=lambda p: -p[1])[:3])
    raise BundleError(f"the bundle would be {total / MB:.1f} MB{stage}, over --max-mb {max_mb:g}; largest parts: "
                      f"{largest}; ship less data, or raise --max-mb")


def refuse_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"--out {out} already exists and is not empty; remove it or pick another folder")


def build(root: Path, out: Path, target: Target, frameworks, data=(), max_mb=None, pip=wheels.run_pip) -> dict:
    """Assemble the bundle for `target` at `out` (module docstring); returns its manifest."""
    refuse_out(out)
    if max_mb is not None and max_mb <= 0:
        raise BundleError(f"--max-mb {max_mb:g} must be positive")
    stores = check_stores(list(data))
    requirements, _, pins = wheels.project_metadata(root)
    decisions = wheels.decide(requirements, target, frameworks, pins)
    tokenizer.load()  # before any copying: a missing tokenizer is a one-line error, nothing half-built
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        copy_source(root, tmp / "src")
        (tmp / "tokenizer").mkdir()
        tokenizer.save(tmp / "tokenizer" / "tokenizer.json")
        for name, path in stores.items():
            shutil.copytree(path, tmp / "processed_data" / name)
        write_run_sh(tmp / "run.sh", target)
        check_limit(sizes(tmp), max_mb, " before its wheels")
        decisions = wheels.resolve(decisions, target, tmp / "wheels", pip)
        parts = sizes(tmp)
        check_limit(parts, max_mb, "")
        manifest = {"target": {"name": target.name, "python": target.python, "platforms": target.platforms(),
                               "driver": target.driver, "about": target.about, "absent": list(target.absent)},
                    "frameworks": list(frameworks), "stores": sorted(stores), "jobs": list(JOBS),
                    "requirements": [d.line() for d in decisions], "bytes": parts, "total_bytes": sum(parts.values())}
        (tmp / "bundle.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty: refuse_out checked
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
