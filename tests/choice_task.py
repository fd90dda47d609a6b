"""A local lm-eval multiple-choice task over a JSON-lines file of {question, choices, answer} items, so the
harness runs offline."""

import textwrap
from pathlib import Path


def write_choice_task(tasks_dir: Path, name: str, items_file: Path, metrics=("acc",)) -> str:
    """Writes `tasks_dir/<name>.yaml` and returns the folder, for lm-eval's include path."""
    tasks_dir.mkdir(parents=True, exist_ok=True)
    metric_list = "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n" for m in metrics)
    (tasks_dir / f"{name}.yaml").write_text(textwrap.dedent(f"""\
        task: {name}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {items_file}
        output_type: multiple_choice
        test_split: test
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{answer}}}}"
        """) + "metric_list:\n" + metric_list + "metadata:\n  version: 1.0\n")
    return str(tasks_dir)
