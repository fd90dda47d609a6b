"""The bundle's parts without a network: targets and freeze files, which requirements are kept or carried, pip's
resolution and failures (a fake pip), the assembly and its size limit, run.sh's and the job runner's one-line
errors."""

import json
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from jax_nano.bundle import build, job, wheels
from jax_nano.bundle.targets import PRESETS, BundleError, Target, get_target, read_freeze
from jax_nano.core import device
from jax_nano.core.cli import run_main
from jax_nano.data import tokenizer
from tests.script_modules import load_script

ROOT = Path(__file__).resolve().parents[2]
REQUIRES = ">=3.11"
FREEZE = """# made on the target
jax==0.11.2
jaxlib==0.11.2
Flax==0.13.0
numpy==2.5.2
torch==2.11.0+cu130
some_pkg @ file:///wheels/some_pkg-1.0-py3-none-any.whl
-e git+https://example.invalid/x.git#egg=x
"""


def freeze_target(tmp_path, text=FREEZE) -> Target:
    path = tmp_path / "freeze.txt"
    path.write_text(text)
    return get_target(str(path), "3.12", REQUIRES)


def fake_pip(picked: dict, calls: list):
    """A pip whose `download` 'resolves' to `picked` (name -> version): one small wheel file each."""

    def pip(args):
        calls.append(args)
        if "-c" in args:  # the target's versions, read while the file exists
            calls.append(Path(args[args.index("-c") + 1]).read_text())
        dest = Path(args[args.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        for name, version in picked.items():
            (dest / f"{name}-{version}-py3-none-any.whl").write_bytes(b"x" * 1000)
        return subprocess.CompletedProcess(args, 0, "", "")

    return pip


def test_freeze_files_and_presets_make_targets(tmp_path):
    target = freeze_target(tmp_path)
    assert target.packages["flax"] == "0.13.0" and target.packages["some-pkg"] == "" and "x" not in target.packages
    assert target.python_minor == "3.12"
    tags = PRESETS["cuda13-py312"].platforms()
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert get_target(None, None, REQUIRES).name == "cuda13-py312"


@pytest.mark.parametrize("preinstalled,python,message", [
    ("no-such-preset", None, "is neither a preset nor a file"),
    ("cuda13-py312", "3.13", "preset cuda13-py312 is Python 3.12.3, not 3.13"),
    ("cuda13-py312", "3.10", "the project needs Python >=3.11"),
    ("cuda13-py312", "three", "is not a Python 3 version"),
    ("FREEZE", None, "a freeze file does not say the target's Python"),
])
def test_bad_targets_are_one_line(tmp_path, preinstalled, python, message):
    if preinstalled == "FREEZE":
        (tmp_path / "f.txt").write_text(FREEZE)
        preinstalled = str(tmp_path / "f.txt")
    with pytest.raises(BundleError, match=message):
        get_target(preinstalled, python, REQUIRES)


def test_a_freeze_file_that_is_not_one_names_the_line(tmp_path):
    (tmp_path / "f.txt").write_text("jax==0.11.2\nthis is not = a requirement\n")
    with pytest.raises(BundleError, match="line 2"):
        read_freeze(tmp_path / "f.txt")


def test_kept_carried_and_skipped_follow_the_project_ranges(tmp_path):
    reqs = [Requirement(r) for r in ("jax>=0.10,<0.12", "flax>=0.12,<0.13", "torch>=2.11,<2.14", "tqdm>=4.66,<5",
                                     "datasets>=3.0", "gguf>=0.10", "some-pkg>=2")]
    got = {d.name: d for d in wheels.decide(reqs, freeze_target(tmp_path), ("jax", "torch"), {"torch": "2.13.0"})}
    assert got["jax"].action == "keep"
    assert got["flax"].action == "carry" and "outside" in got["flax"].why  # the target's 0.13.0 would break
    assert got["torch"].action == "keep" and "pin 2.13.0" in got["torch"].why  # reported, not carried
    assert got["tqdm"].action == "carry" and got["tqdm"].why == "the target lacks it"
    assert got["datasets"].action == got["gguf"].action == "skip"
    assert got["some-pkg"].action == "keep" and "unknown version" in got["some-pkg"].why
    jax_only = {d.name: d.action for d in wheels.decide(reqs, freeze_target(tmp_path), ("jax",))}
    assert jax_only["torch"] == "skip"


def test_resolution_holds_the_target_fixed_and_adds_missing_dependencies(tmp_path):
    target = freeze_target(tmp_path)
    decisions = wheels.decide([Requirement("flax>=0.12,<0.13"), Requirement("jax>=0.10")], target, ("jax",))
    calls = []
    pip = fake_pip({"flax": "0.12.12", "jax": "0.11.2", "rich": "15.0.0", "numpy": "2.5.2"}, calls)
    out = wheels.resolve(decisions, target, tmp_path / "w", pip)
    got = {d.name: d for d in out}
    assert got["flax"].version == "0.12.12" and got["rich"].action == "carry" and "dependency" in got["rich"].why
    assert got["jax"].action == "keep" and not got["jax"].version and "numpy" not in got
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "w").iterdir()) == ["flax", "rich"]
    args, constraints = calls
    assert args[0] == "download" and args[args.index("--abi") + 1] == "cp312" and "flax<0.13,>=0.12" in args
    assert "jax==0.11.2\n" in constraints and "torch==2.11.0+cu130\n" in constraints
    assert "flax" not in constraints and "some-pkg" not in constraints  # replaced, and of unknown version


@pytest.mark.parametrize("stderr,message", [
    ("ERROR: No matching distribution found for matplotlib<4,>=3.8", "no wheel of matplotlib<4,>=3.8 for Python 3.12"),
    ("WARNING: Retrying ... NewConnectionError(...)", "could not reach a package index"),
    ("ERROR: something odd", "pip failed for Python 3.12 on manylinux x86_64: ERROR: something odd"),
])
def test_pip_failures_are_one_line(tmp_path, stderr, message):
    error = wheels.pip_failure(subprocess.CompletedProcess([], 1, "", stderr), freeze_target(tmp_path))
    assert message in str(error) and "\n" not in str(error)


@pytest.fixture
def no_gguf(monkeypatch):
    """The bundle's tokenizer.json without reading the GGUF (the stand-in test ships the real one)."""
    monkeypatch.setattr(tokenizer, "load", lambda: None)
    monkeypatch.setattr(tokenizer, "save", lambda path: Path(path).write_text("{}"))


def test_build_assembles_source_store_tokenizer_wheels_and_reports_sizes(tmp_path, toy_store, no_gguf):
    target = freeze_target(tmp_path, "jax==0.11.2\nflax==0.12.12\noptax==0.2.8\norbax-checkpoint==0.12.8\n"
                                     "numpy==2.5.2\nmatplotlib==3.11.2\ntokenizers==0.23.2\n")
    out = tmp_path / "bundle"
    manifest = build.build(ROOT, out, target, ("jax",), data=[toy_store], pip=fake_pip({"tqdm": "4.70.1"}, []))
    assert (out / "src" / "jax_nano" / "bundle" / "job.py").is_file() and not (out / "src" / "tests").exists()
    assert not list(out.rglob("__pycache__")) and (out / "processed_data" / "toy" / "header.json").is_file()
    assert [p.name for p in (out / "wheels").iterdir()] == ["tqdm-4.70.1-py3-none-any.whl"]
    assert "PY_WANTED=\"3.12\"" in (out / "run.sh").read_text()
    assert manifest["bytes"]["wheels/tqdm-4.70.1-py3-none-any.whl"] == 1000
    assert json.loads((out / "bundle.json").read_text())["total_bytes"] == sum(manifest["bytes"].values())
    report = build.size_report(manifest["bytes"])
    assert "in all" in report and "wheels (1)" in report and "processed_data/toy" in report
    assert not list(tmp_path.glob(".bundle.tmp-*"))


def test_a_bundle_over_max_mb_is_refused_naming_the_largest_parts(tmp_path, toy_store, no_gguf):
    out = tmp_path / "bundle"
    with pytest.raises(BundleError, match=r"over --max-mb 0.5; largest parts: src [\d.]+ MB"):
        build.build(ROOT, out, PRESETS["cuda13-py312"], ("jax", "torch"), data=[toy_store], max_mb=0.5)
    assert not out.exists() and not list(tmp_path.glob(".bundle.tmp-*"))


def test_an_occupied_out_and_two_stores_of_one_name_are_refused(tmp_path, toy_store, no_gguf):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(BundleError, match="already exists and is not empty"):
        build.build(ROOT, tmp_path / "full", PRESETS["cuda13-py312"], ("jax",))
    with pytest.raises(BundleError, match="two --data stores are named 'toy'"):
        build.build(ROOT, tmp_path / "b", PRESETS["cuda13-py312"], ("jax",), data=[toy_store, toy_store])


def test_the_script_refuses_bad_input_in_one_line(capsys):
    script = load_script("bundle")
    for argv, message in ((["--out", "x", "--preinstalled", "nope"], "neither a preset nor a file"),
                          (["--out", "x", "--frameworks", "jax,mxnet"], "--frameworks 'jax,mxnet'")):
        assert run_main(script.main, argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_jobs_run_the_scripts_with_their_devices():
    argvs, dev, frameworks, _ = job.commands("track", ["8M", "--data", "processed_data/offline"], True)
    assert [a[:5] for a in argvs] == [["speedrun.py", "--track", "8M", "--framework", "jax"],
                                      ["speedrun.py", "--track", "8M", "--framework", "torch"]]
    assert dev == "auto" and frameworks == ("jax", "torch") and "LEADERBOARD.md" in argvs[0]
    argvs, _, frameworks, _ = job.commands("track", ["8M", "--framework=torch"], True)
    assert len(argvs) == 1 and frameworks == ("torch",)
    assert job.commands("smoke", ["--device", "cpu"], False)[1:3] == ("cpu", ("jax",))
    assert job.commands("bench", ["--smoke"], True)[1] == "cpu" and job.commands("bench", [], True)[1] == "gpu"
    assert job.commands("plan", ["--gpu", "h100"], True)[:2] == ([["plan.py", "--gpu", "h100"]], "none")
    with pytest.raises(BundleError, match="unknown job 'train'; choose one of smoke, track"):
        job.commands("train", [], True)
    with pytest.raises(BundleError, match="track needs a track name"):
        job.commands("track", ["--max-steps", "3"], True)


def test_a_gpu_jax_cannot_use_stops_the_job_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(device, "driver_version", lambda: "580.95.05")
    monkeypatch.setattr(device, "jax_gpu_usable", lambda: device.Probe(False, "CPU-only jaxlib 0.11.2"))
    assert run_main(job.main, ["smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: JAX cannot use the NVIDIA GPU (driver 580.95.05")
    assert not (tmp_path / "logs").exists()


def test_run_sh_refuses_an_unknown_job_in_one_line(tmp_path):
    build.write_run_sh(tmp_path / "run.sh", PRESETS["cuda13-py312"])
    for args, message in ((["train"], "error: unknown job 'train'; choose one of smoke, track, compare, bench, plan"),
                          (["smoke"], "error: no output folder; pass --out DIR or set OUT_DIR")):
        proc = subprocess.run(["bash", str(tmp_path / "run.sh"), *args], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 2 and proc.stderr.strip() == message


def test_a_tokenizer_json_that_is_not_one_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "tokenizer.json").write_text("not json")
    monkeypatch.setenv(tokenizer.TOKENIZER_ENV, str(tmp_path / "tokenizer.json"))
    with pytest.raises(tokenizer.DataError, match="is not a readable tokenizer.json"):
        tokenizer.load()


@pytest.mark.skipif(not tokenizer.available(), reason="needs the SmolLM2 GGUF (README, Quick start)")
def test_the_shipped_tokenizer_json_loads_without_the_gguf(tmp_path, monkeypatch):
    tokenizer.save(tmp_path / "tokenizer.json")
    monkeypatch.setenv(tokenizer.TOKENIZER_ENV, str(tmp_path / "tokenizer.json"))
    monkeypatch.setattr(tokenizer, "gguf_path", lambda: pytest.fail("read the GGUF"))
    assert tokenizer.encode_batch(["Hello world 2024"]) == [[19556, 905, 216, 34, 32, 34, 36]]


def test_only_data_conversion_imports_datasets_and_gguf():
    """A bundle's target lacks both: every other module must import without them."""
    import ast

    users = {}
    sources = (p for root in ("configs", "jax_nano", "torch_ref", "scripts") for p in (ROOT / root).rglob("*.py"))
    for path in sorted(sources):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                if name.split(".")[0] in wheels.NOT_NEEDED:
                    users.setdefault(name.split(".")[0], set()).add(path.relative_to(ROOT).as_posix())
    assert users == {"datasets": {"jax_nano/data/sources.py"}, "gguf": {"jax_nano/data/tokenizer.py"}}
