"""The layout is the architecture: layered imports with no cycles, each framework importable and trainable without
the other, small modules with docstrings, both trainers on one interface, and docs/layout.md matching the tree."""

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jax_nano.core.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "jax_nano", "torch_ref")
SOURCES = PACKAGES + ("scripts",)
MAX_LINES = 400
JAX = ("jax", "jaxlib", "flax", "optax", "orbax")
TORCH = ("torch",)
# jax_nano/ subpackages by layer; a module straight under jax_nano/ is the JAX implementation (layer 3, beside
# torch_ref/). A module may import only from its own layer or below, and the two implementations never import
# each other.
LAYERS = {"configs": 0, "core": 1, "data": 2, "interop": 4, "run": 5, "evaluate": 6, "bench": 6, "plan": 6,
          "bundle": 6}
IMPLEMENTATION = 3
FRAMEWORK_FREE = ("configs", "jax_nano.core", "jax_nano.data", "jax_nano.run")
# The optional `hf` extra: imported inside functions only, and only by the modules that read or write its formats.
HF = ("transformers", "safetensors", "accelerate")
HF_MODULES = ("jax_nano.interop.hf", "jax_nano.interop.hf_export", "jax_nano.interop.weights")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files(roots=PACKAGES) -> list[Path]:
    return sorted(p for root in roots for p in (ROOT / root).rglob("*.py") if "__pycache__" not in p.parts)


MODULES = {module_name(p): p for p in source_files()}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, whether at module level) for every import of the file, nested ones too."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from package import module` imports the module; `from module import name` the module itself
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(sub if sub in MODULES else node.module, id(node) in top) for sub in subs]
    return found


def project_edges() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        edges[name] = {target for target, _ in imports(path) if target in MODULES and target != name}
    return edges


def layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] == "configs":
        return LAYERS["configs"]
    if parts[0] == "torch_ref":
        return IMPLEMENTATION
    return LAYERS.get(parts[1], IMPLEMENTATION) if len(parts) > 1 else IMPLEMENTATION


def is_jax_implementation(module: str) -> bool:
    """A module straight under jax_nano/, or in a folder of the implementation's own (jax_nano/variants/)."""
    parts = module.split(".")
    return parts[0] == "jax_nano" and len(parts) >= 2 and parts[1] not in LAYERS


def test_no_import_cycles():
    edges = project_edges()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_run_down_the_layers_and_the_implementations_stay_apart():
    wrong = []
    for source, targets in project_edges().items():
        for target in targets:
            if target.startswith(source + ".") or source.startswith(target + "."):
                continue  # a package and its own modules
            up = layer(target) > layer(source)
            across = layer(source) == layer(target) == IMPLEMENTATION and (
                is_jax_implementation(source) != is_jax_implementation(target))
            if up or across:
                wrong.append(f"{source} -> {target}")
    assert not wrong, "imports against the layers: " + ", ".join(sorted(wrong))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_framework_imports_stay_in_their_rooms(name):
    found = imports(MODULES[name])
    roots = {(target.split(".")[0], top) for target, top in found}
    if name.startswith(FRAMEWORK_FREE):
        assert not {r for r, top in roots if top and r in JAX + TORCH}, f"{name} imports a framework at module level"
    if is_jax_implementation(name):
        assert not {r for r, _ in roots if r in TORCH}, f"{name} (the JAX implementation) imports torch"
    if name.startswith("torch_ref"):
        assert not {r for r, _ in roots if r in JAX}, f"{name} (the PyTorch reference) imports JAX"
    assert not {r for r, top in roots if top and r in HF}, f"{name} imports the optional hf extra at module level"
    assert name in HF_MODULES or not {r for r, _ in roots if r in HF}, f"{name} imports the hf extra"


def run_without(blocked: tuple, code: str, cwd=ROOT) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter where importing any of `blocked` fails, as if it were not installed."""
    prelude = f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\nsys.path.insert(0, {str(ROOT)!r})\n"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=600)


def test_the_driver_core_and_data_import_without_either_framework():
    names = sorted(n for n in MODULES if n.startswith(FRAMEWORK_FREE))
    proc = run_without(JAX + TORCH, "".join(f"import {n}\n" for n in names))
    assert proc.returncode == 0, proc.stderr[-2000:]


TRAIN_ALONE = """
import json
{imports}
from tests.toy import toy_track
from jax_nano.run.speedrun import speedrun
summary = speedrun(toy_track({store!r}, steps=3, framework={framework!r}), results_dir="results", runs_dir="runs",
                   show_bar=False)
print(json.dumps({{k: summary[k] for k in ("steps", "train_loss", "weights_sha256", "framework")}}))
"""


@pytest.mark.parametrize("framework,blocked", [("jax", TORCH), ("torch", JAX)])
def test_each_framework_imports_and_trains_without_the_other(framework, blocked, toy_store, tmp_path):
    """Every module of the implementation imports with the other framework uninstalled, and a run trains."""
    mine = [n for n in MODULES if (is_jax_implementation(n) if framework == "jax" else n.startswith("torch_ref."))]
    code = TRAIN_ALONE.format(imports="".join(f"import {n}\n" for n in sorted(mine)), store=toy_store,
                              framework=framework)
    proc = run_without(blocked, code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["framework"] == framework and summary["steps"] == 3 and len(summary["weights_sha256"]) == 64
    assert (tmp_path / "results" / f"smoke-{framework}.json").is_file()


def test_both_trainers_follow_the_trainer_interface():
    from jax_nano.run.speedrun import TRAINERS, trainer_class
    from jax_nano.train import JaxTrainer
    from torch_ref.train import TorchTrainer

    members = [m for m in vars(Trainer) if not m.startswith("_") or m == "__init__"]
    assert {"setup", "step", "read", "rewind", "save", "restore", "export"} <= set(members)
    for cls in (JaxTrainer, TorchTrainer):
        for member in members:
            wanted = inspect.getattr_static(Trainer, member)
            if not callable(wanted) and not isinstance(wanted, staticmethod):
                continue
            got = inspect.getattr_static(cls, member, None)
            assert got is not None, f"{cls.__name__} lacks {member}"
            assert isinstance(got, staticmethod) == isinstance(wanted, staticmethod), f"{cls.__name__}.{member}"
            want_params = list(inspect.signature(getattr(Trainer, member)).parameters)
            got_params = list(inspect.signature(getattr(cls, member)).parameters)
            assert set(want_params) <= set(got_params), f"{cls.__name__}.{member}{got_params}"
    for framework in TRAINERS:
        assert trainer_class(framework).framework == framework


@pytest.mark.parametrize("path", source_files(SOURCES + ("tests", "parity_tests")),
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_module_is_small_and_says_what_it_holds(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.name} has {len(text.splitlines())} lines (at most {MAX_LINES})"
    doc = ast.get_docstring(ast.parse(text))
    assert doc and doc.splitlines()[0].strip(), f"{path.name} has no docstring saying what it holds"


def documented_layout() -> list[str]:
    """The paths docs/layout.md lists, one bullet each that starts with the path in backticks."""
    text = (ROOT / "docs" / "layout.md").read_text()
    return re.findall(r"^- `([^`]+)`", text, flags=re.M)


def test_documented_layout_matches_the_tree():
    listed = documented_layout()
    assert len(listed) == len(set(listed)), "docs/layout.md lists a path twice"
    folders = {f"{p.relative_to(ROOT).as_posix()}/" for root in SOURCES
               for p in [ROOT / root, *(ROOT / root).rglob("*")] if p.is_dir() and p.name != "__pycache__"}
    modules = {p.relative_to(ROOT).as_posix() for p in source_files(SOURCES) if p.name != "__init__.py"}
    tree = folders | modules | {"parity_tests/", "tests/"}
    assert not set(listed) - tree, f"docs/layout.md lists what is not in the tree: {sorted(set(listed) - tree)}"
    assert not tree - set(listed), f"docs/layout.md misses: {sorted(tree - set(listed))}"
