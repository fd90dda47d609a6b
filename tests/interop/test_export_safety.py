"""An export's model card shows a stranger's strings as text, never as Markdown structure or HTML; and of two
exports to one new --out the second is refused once the first has claimed it."""

import json
import re
import threading

import numpy as np
import pytest
import torch

from configs.model import get_model_config
from jax_nano.interop import hf_export
from jax_nano.interop.hf_export import ExportError
from torch_ref.model import MinimalLLM

HOSTILE = "x\n# Owned\n| injected | row |\n<script>alert(1)</script>\r\n<img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def tiny():
    cfg = get_model_config("tiny")
    torch.manual_seed(0)
    return cfg, {k: v.numpy() for k, v in MinimalLLM(cfg).state_dict().items()}


def cells(row: str) -> list[str]:
    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


def test_the_model_card_keeps_hostile_names_and_figures_inert(tiny, tmp_path):
    cfg, weights = tiny
    # A results/RUN.json as a stranger may hand it over: every text field hostile, the figures real.
    crafted = tmp_path / "evil.json"
    crafted.write_text(json.dumps({
        "run": HOSTILE, "track": HOSTILE, "framework": "jax|torch", "device": "<b>GPU</b>", "steps": "3\n# s",
        "tokens": 1536, "active_time": HOSTILE, "val_loss": 5.0, "weights_sha256": HOSTILE, "data_sha256": "d",
        "params": 156_032, "eligible": False, "date": "2026-12-03", "commit": "c\n## More"}))
    card = hf_export.model_card(cfg, weights, json.loads(crafted.read_text()), f"run {HOSTILE}", False)
    lines = card.split("\n")
    assert [line for line in lines if line.startswith("#")] == [
        "# x # Owned \\| injected \\| row \\| &lt;script&gt;alert(1)&lt;/script&gt;  "
        "&lt;img src=x onerror=alert(2)&gt;", "## Use", "## Same function, other layout"]
    rows = [line for line in lines if line.startswith("|")]
    assert len(rows) == 2 + 3 + 13 and all(len(cells(row)) == 2 for row in rows), rows
    assert "<script" not in card and "<img" not in card and "<b>" not in card
    assert "| Framework | jax\\|torch |" in rows and "| Steps | 3 # s |" in rows and "| Tokens | 1,536 |" in rows


def test_a_second_export_to_a_claimed_out_is_refused_and_the_first_kept(tiny, tmp_path, monkeypatch):
    cfg, weights = tiny
    out = tmp_path / "exports" / "new"
    writing, release = threading.Event(), threading.Event()
    save = hf_export._save_safetensors

    def slow_first_save(arrays, path, metadata):
        if not writing.is_set():
            writing.set()
            assert release.wait(60)
        save(arrays, path, metadata)

    monkeypatch.setattr(hf_export, "_save_safetensors", slow_first_save)
    first = threading.Thread(target=hf_export.export, args=(weights, cfg, out, "safetensors"))
    first.start()
    try:
        assert writing.wait(60)
        other = {k: v + 1 for k, v in weights.items()}
        with pytest.raises(ExportError, match=r"--out .*new is being written by another export \(process \d+\)"):
            hf_export.export(other, cfg, out, "safetensors")
    finally:
        release.set()
        first.join(60)
    # Once the first is done the folder is its, and a later export without --force is refused as before.
    with pytest.raises(ExportError, match="exists and is not empty; pass --force"):
        hf_export.export({k: v + 1 for k, v in weights.items()}, cfg, out, "safetensors")
    from safetensors.numpy import load_file

    saved = load_file(out / "model.safetensors")
    assert np.array_equal(saved["token_embedding.weight"], weights["token_embedding.weight"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["new"]  # no lock file or temporary folder left
