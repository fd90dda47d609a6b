"""Which wheels a bundle carries: the project's runtime requirements set against the target's packages, resolved
and downloaded for the target's Python and platform by pip.

Two checks decide whether a target's version is kept or a wheel is carried (and shadows it on the path):
1. the project's range in pyproject.toml: a version outside it is replaced by the newest one inside;
2. pip's resolver, run with every kept version as a constraint: a carried wheel that needs another version of
   a kept package stops the build, naming the conflict.
Versions that differ from the project's own pins (constraints.txt) are reported, never carried for that alone:
the ranges are what the project supports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from jax_nano.bundle.targets import BundleError, Target

# Needed by the project but not on a bundle's target, and why.
NOT_NEEDED = {
    "datasets": "the bundle ships prepared token stores; only scripts/prepare_data.py converts Hub data",
    "gguf": "the bundle ships tokenizer.json; only the GGUF reader in jax_nano/data/tokenizer.py needs it",
}
FRAMEWORK_PACKAGES = {"jax": ("jax",), "torch": ("torch",)}

Pip = Callable[[list], subprocess.CompletedProcess]


def run_pip(args: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


@dataclass(frozen=True)
class Decision:
    name: str  # canonical
    spec: str  # the project's range, "" for a carried dependency of a carried package
    target: str | None  # the target's version: None absent, "" unknown
    action: str  # "keep", "carry" or "skip"
    why: str
    version: str = ""  # the carried version, once resolved

    def line(self) -> str:
        have = {None: "absent", "": "version unknown"}.get(self.target, self.target)
        carried = f" {self.version}" if self.version else ""
        return f"{self.name}{self.spec} (target: {have}): {self.action}{carried}, {self.why}"


def project_metadata(root: Path) -> tuple[list[Requirement], str, dict]:
    """(runtime requirements, requires-python, constraints.txt pins) of the source tree at `root`. The requirements
    include the `torch` extra's: `decide` keeps them only for a bundle that runs PyTorch."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = {}
    constraints = root / "constraints.txt"
    if constraints.is_file():
        for line in constraints.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                req = Requirement(line)
                pins[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    runtime = project["dependencies"] + project.get("optional-dependencies", {}).get("torch", [])
    return [Requirement(r) for r in runtime], project["requires-python"], pins


def _fits(version: str, req: Requirement) -> bool:
    try:
        return req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def decide(requirements: list[Requirement], target: Target, frameworks, pins: dict | None = None) -> list[Decision]:
    """Keep, carry or skip each runtime requirement on `target` (module docstring); `frameworks` the bundle runs."""
    pins = pins or {}
    unused = {p for f, packages in FRAMEWORK_PACKAGES.items() if f not in frameworks for p in packages}
    out = []
    for req in requirements:
        name = canonicalize_name(req.name)
        have = target.version(name)
        spec = str(req.specifier)
        pin = pins.get(name)
        note = f"; differs from the project's pin {pin} (constraints.txt)" if pin and have and have != pin else ""
        if name in NOT_NEEDED:
            out.append(Decision(name, spec, have, "skip", NOT_NEEDED[name]))
        elif name in unused:
            out.append(Decision(name, spec, have, "skip", f"this bundle runs {', '.join(frameworks)} only"))
        elif have is None:
            out.append(Decision(name, spec, have, "carry", "the target lacks it"))
        elif have == "":
            out.append(Decision(name, spec, have, "keep", f"installed at an unknown version, assumed to fit {spec}"))
        elif _fits(have, req):
            out.append(Decision(name, spec, have, "keep", f"within the project's range{note}"))
        else:
            out.append(Decision(name, spec, have, "carry", f"the target's {have} is outside {spec}; the carried "
                                                           "wheel shadows it"))
    return out


def _platform_args(target: Target) -> list[str]:
    abi = "cp" + target.python_minor.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", target.python_minor, "--implementation", "cp", "--abi", abi]
    for tag in target.platforms():
        args += ["--platform", tag]
    return args


def pip_failure(proc: subprocess.CompletedProcess, target: Target) -> BundleError:
    """pip's failure as one line: a package without a wheel for the target, a conflict, or no index."""
    text = proc.stderr + proc.stdout
    where = f"Python {target.python_minor} on manylinux {target.arch}"
    missing = re.search(r"No matching distribution found for (\S+)", text)
    if missing:
        return BundleError(f"no wheel of {missing.group(1)} for {where}: check --python (the target's Python) or "
                           "give a --preinstalled file in which the target already has it")
    if "ResolutionImpossible" in text or "conflict" in text.lower():
        lines = [ln.strip() for ln in text.splitlines() if "requested" in ln or "depends on" in ln]
        detail = "; ".join(lines[:3]) or "see pip's output"
        return BundleError(f"the carried wheels need versions the target does not have ({detail}); add them to "
                           "the target or to --preinstalled")
    if re.search(r"(NewConnectionError|Max retries|Could not fetch URL|Network is unreachable)", text):
        return BundleError("pip could not reach a package index to fetch the wheels; build the bundle on a machine "
                           "with access to PyPI")
    last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), f"exit {proc.returncode}")
    return BundleError(f"pip failed for {where}: {last}")


def resolve(decisions: list[Decision], target: Target, dest: Path, pip: Pip = run_pip) -> list[Decision]:
    """Download the carried requirements and the dependencies the target lacks into `dest`, each in the version
    pip picks for the target with the kept versions held fixed. Returns the decisions with the carried versions
    filled in and one more for each carried dependency.

    `pip download` resolves: it honours --python-version in every check, which `pip install --dry-run --target`
    does not before pip 24 (it tests Requires-Python against the running interpreter and backtracks to old
    releases). It also fetches the target's versions of what the carried wheels depend on; those are dropped."""
    carry = [d for d in decisions if d.action == "carry"]
    if not carry:
        return decisions
    carried = {d.name for d in carry}
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bundle-resolve-") as tmp:
        constraints = Path(tmp) / "target.txt"
        # The target's own versions, except those being replaced: pip then resolves around what is installed.
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in target.packages.items()
                                       if version and name not in carried))
        proc = pip(["download", "--quiet", "-d", str(Path(tmp) / "wheels"), "-c", str(constraints),
                    *_platform_args(target), *[f"{d.name}{d.spec}" for d in carry]])
        if proc.returncode != 0:
            raise pip_failure(proc, target)
        picked = {}
        for wheel in sorted((Path(tmp) / "wheels").glob("*.whl")):
            name, version, _, _ = parse_wheel_filename(wheel.name)
            if name in carried or target.version(name) is None:
                picked[name] = str(version)
                shutil.move(wheel, dest / wheel.name)
    out = [Decision(d.name, d.spec, d.target, d.action, d.why, picked.get(d.name, "")) if d.action == "carry" else d
           for d in decisions]
    named = {d.name for d in out}
    for name, version in sorted(picked.items()):
        if name in named:
            continue
        out.append(Decision(name, "", None, "carry", "a dependency of a carried wheel that the target lacks", version))
    return out
