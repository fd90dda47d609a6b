"""The machines a bundle is built for, as data: Python, platform, and the packages already installed there.

A target comes from a named preset or from a `pip freeze` file of the target machine (more exact: a preset can
only name what such a machine usually holds). Packages that a preset leaves to its top-level names' dependencies
(scipy under jax, for example) are assumed present with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from configs.errors import UserError

PYTHON_RE = re.compile(r"^3\.(\d+)(?:\.\d+)?$")
# The oldest glibc the preset's own wheels need (torch's are manylinux_2_28): a wheel built for it or an older
# glibc runs on the target's newer one, so pip may take any of these.
DEFAULT_GLIBC = (2, 28)


class BundleError(UserError):
    """A bundle cannot be built or run as asked; one line with the fix."""


@dataclass(frozen=True)
class Target:
    name: str
    python: str  # "3.12.3"; the wheels are chosen for its major.minor
    packages: dict  # canonical name -> version ("" when the source names no version)
    absent: tuple = ()  # packages the target is known to lack, for the report
    glibc: tuple = DEFAULT_GLIBC
    arch: str = "x86_64"
    driver: str = ""  # the NVIDIA driver, for the report; the device check reads the real one on the target
    about: str = ""

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])

    def platforms(self) -> list[str]:
        """pip's --platform tags for the target, newest first. pip does not expand manylinux_2_X to older
        glibc versions by itself, so every one is listed."""
        major, minor = self.glibc
        tags = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, 4, -1)]
        legacy = ("manylinux2014", "manylinux2010", "manylinux1")
        return tags + [f"{tag}_{self.arch}" for tag in legacy]

    def version(self, name: str) -> str | None:
        """The target's version of `name` ("" when installed at an unknown version), None when absent."""
        return self.packages.get(canonicalize_name(name))


def _packages(pins: str) -> dict:
    return {canonicalize_name(name): version for name, version in (p.split("==") for p in pins.split())}


PRESETS = {
    "cuda13-py312": Target(
        name="cuda13-py312",
        python="3.12.3",
        # The issue named versions for jax, the CUDA plugins, torch, triton, numpy, tokenizers and transformers;
        # the others are what pip resolves beside them for Python 3.12 (the newest releases that fit).
        packages=_packages(
            "jax==0.11.2 jaxlib==0.11.2 jax-cuda13-plugin==0.11.2 jax-cuda13-pjrt==0.11.2 torch==2.11.0+cu130 "
            "triton==3.6.0 numpy==2.5.2 tokenizers==0.23.2 flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8 "
            "chex==0.1.92 tqdm==4.70.1 matplotlib==3.11.2 safetensors==0.8.0 huggingface-hub==1.33.0 "
            "transformers==5.17.0"),
        absent=("datasets", "gguf", "lm-eval"),
        driver="580 (CUDA 13)",
        about="Python 3.12.3 on x86-64 Linux, JAX 0.11.2 with its CUDA 13 plugin, PyTorch 2.11.0 (CUDA 13.0 build)",
    ),
}


def check_python(python: str, requires_python: str) -> str:
    """`python` as the target's version, refused when malformed or outside the project's `requires-python`."""
    if not PYTHON_RE.match(python):
        raise BundleError(f"--python {python!r} is not a Python 3 version; give one like 3.12")
    minor = ".".join(python.split(".")[:2])
    if not SpecifierSet(requires_python).contains(f"{minor}.99" if python.count(".") == 1 else python):
        raise BundleError(f"--python {python}: the project needs Python {requires_python}; "
                          "pick the target's Python within that range")
    return python


def read_freeze(path: Path) -> dict:
    """Canonical name -> version from `pip freeze` output. `name @ url` lines (no version) map to "";
    editable lines (`-e ...`) and comments are skipped: an editable checkout is not a wheel pip can match."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"--preinstalled {path} cannot be read ({e.__class__.__name__}); give a `pip freeze` "
                          "file of the target") from None
    packages = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            raise BundleError(f"--preinstalled {path}, line {number}: {raw.strip()!r} is not a `pip freeze` line "
                              "(NAME==VERSION); give the output of `pip freeze` on the target") from None
        pinned = [s.version for s in req.specifier if s.operator in ("==", "===")]
        packages[canonicalize_name(req.name)] = pinned[0] if pinned else ""
    if not packages:
        raise BundleError(f"--preinstalled {path} lists no packages; give the output of `pip freeze` on the target")
    return packages


def get_target(preinstalled: str | None, python: str | None, requires_python: str) -> Target:
    """The target from a preset name or a freeze file (default: the first preset). A freeze file does not say
    which Python it came from, so it needs `python`; a preset's Python is part of the preset."""
    spec = preinstalled or next(iter(PRESETS))
    if spec in PRESETS:
        target = PRESETS[spec]
        if python is not None and check_python(python, requires_python).split(".")[:2] != \
                target.python.split(".")[:2]:
            raise BundleError(f"preset {spec} is Python {target.python}, not {python}; for another Python give "
                              "a `pip freeze` file of that target with --preinstalled")
    elif Path(spec).is_file():
        if python is None:
            raise BundleError(f"--preinstalled {spec}: a freeze file does not say the target's Python; add "
                              "--python 3.X (what `python3 --version` prints there)")
        target = Target(name=Path(spec).name, python=python, packages=read_freeze(Path(spec)),
                        about=f"the packages of {spec}")
    else:
        raise BundleError(f"--preinstalled {spec!r} is neither a preset nor a file; choose one of "
                          f"{', '.join(PRESETS)} or give a `pip freeze` file of the target")
    check_python(target.python, requires_python)
    return target
