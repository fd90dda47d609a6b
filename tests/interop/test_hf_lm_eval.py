"""lm-eval's own `hf` backend on the exported transformers folder and the project's `jax-nano` backend on the run
give the same per-item log-likelihoods and the same accuracy, on a small local multiple-choice task."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")
lm_eval = pytest.importorskip("lm_eval", reason="the eval extra is not installed (pip install -e '.[eval]')")
pytest.importorskip("accelerate", reason="lm-eval's hf backend needs accelerate (the hf extra)")

from lm_eval.tasks import TaskManager  # noqa: E402

from jax_nano.evaluate.lm_eval_model import JaxNanoLM  # noqa: E402
from tests.choice_task import write_choice_task  # noqa: E402

ITEMS = Path(__file__).with_name("hf_choice.jsonl")


def task_dir(tmp_path) -> str:
    return write_choice_task(tmp_path / "tasks", "hf_choice", ITEMS)


def per_item(out) -> dict:
    return {s["doc"]["question"]: [r[0] for r in s["filtered_resps"]] for s in out["samples"]["hf_choice"]}


def test_lm_evals_hf_backend_on_the_export_scores_like_jax_nano_on_the_run(hf_run, tmp_path):
    summary, runs_dir, _, folder = hf_run
    manager = TaskManager(include_path=task_dir(tmp_path), include_defaults=False)
    hf = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(folder), "dtype": "float32",
                                                         "device": "cpu"},
                                 tasks=["hf_choice"], task_manager=manager, batch_size=4)
    ours = lm_eval.simple_evaluate(model=JaxNanoLM(run=summary["run"], runs_dir=runs_dir, batch_size=4,
                                                   show_bar=False),
                                   tasks=["hf_choice"], task_manager=manager)
    hf_items, our_items = per_item(hf), per_item(ours)
    assert set(hf_items) == set(our_items) and len(hf_items) == 6
    for question, scores in our_items.items():
        np.testing.assert_allclose(hf_items[question], scores, atol=1e-4, err_msg=question)
    assert hf["results"]["hf_choice"]["acc,none"] == ours["results"]["hf_choice"]["acc,none"]
