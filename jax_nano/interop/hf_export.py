"""Trained weights out for the Hugging Face ecosystem: a transformers folder (`hf`) or upstream's state_dict as
safetensors (`safetensors`), each written whole into a temporary folder and renamed into place.

`hf`: config.json and generation_config.json (transformers' own classes write them), model.safetensors in the
stock layout of jax_nano/interop/hf.py, the SmolLM2 tokenizer (tokenizer.json, tokenizer_config.json and the
special tokens) when the model has its vocabulary, and a README.md model card with the run's figures.
`safetensors`: model.safetensors with upstream's names (the tied head once), the model's config in its metadata.
transformers and safetensors are imported only here and in hf.py (the optional `hf` extra).
"""

import contextlib
import dataclasses
import html
import json
import os
import secrets
import shutil
from pathlib import Path

from configs.errors import UserError
from configs.model import ModelConfig
from jax_nano.core.checksums import weights_sha256
from jax_nano.core.runlock import Held, hold
from jax_nano.core.safe_paths import check_path_arg
from jax_nano.interop.hf import FAMILIES, WEIGHTS, hf_config, require, to_hf
from torch_ref.tensors import torch_state_dict

# format -> the packages it needs beyond the project's own
FORMATS = {"hf": ("transformers", "safetensors"), "safetensors": ("safetensors",), "upstream": ()}
CARD = "README.md"


class ExportError(UserError, ValueError):
    """An export that cannot be written as asked; one line with the fix."""


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; pass --format with one of {', '.join(FORMATS)}")
    require(*FORMATS[fmt])


def check_out(out, force: bool) -> Path:
    """`out` as a Path, once it is clear the export may be written there."""
    out = check_path_arg(out, "--out")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; pass a folder (it is created)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out} exists and is not empty; pass --force to replace it, or another --out")
    return out


@contextlib.contextmanager
def claimed(out: Path, force: bool):
    """Hold `out` for this export: a flock on a file beside it, taken before `out` is checked, so of two exports
    to one --out the second is refused (while the first writes, or by check_out once it has) instead of replacing
    the first's folder. The kernel drops the lock however its holder ends."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.export-lock"
    try:
        fd = hold(lock)
    except Held as e:
        raise ExportError(f"--out {out} is being written by another export (process {e.holder}); wait for it to "
                          "end, then pass --force to replace its folder, or choose another --out") from None
    try:
        check_out(out, force)
        yield out
    finally:
        lock.unlink(missing_ok=True)  # while still held: the next export makes a fresh one and checks `out` again
        os.close(fd)


@contextlib.contextmanager
def staged(out: Path):
    """A temporary folder beside `out` to write into; on success it replaces `out` (and whatever was there), on any
    error it is removed and `out` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.old"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_safetensors(arrays: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    save_file(torch_state_dict(arrays), path, metadata=metadata)
    # safetensors creates the file readable by its owner only; the umask decides, as for any other file.
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def write_safetensors(folder: Path, weights: dict, cfg: ModelConfig) -> None:
    """Upstream's names, the tied head once (safetensors stores no shared tensors; the readers tie it back)."""
    arrays = {k: v for k, v in weights.items() if k != "lm_head.weight"}
    metadata = {"format": "pt", "jax_nano_config": json.dumps(dataclasses.asdict(cfg))}
    _save_safetensors(arrays, folder / WEIGHTS, metadata)


def write_tokenizer(folder: Path, cfg: ModelConfig) -> None:
    """SmolLM2's tokenizer as transformers saves it, named by the class every transformers release knows, and the
    special tokens also in special_tokens_map.json for readers that look there."""
    from transformers import PreTrainedTokenizerFast

    from jax_nano.data import tokenizer

    eos = "<|endoftext|>"
    special = {"bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": eos}
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer.load(), model_max_length=cfg.max_seq_len,
                                     clean_up_tokenization_spaces=False, **special)
    hf_tok.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def write_hf(folder: Path, weights: dict, cfg: ModelConfig) -> None:
    """The transformers folder of `weights` (upstream's names) into `folder`, but the model card."""
    from transformers import AutoConfig, GenerationConfig

    from jax_nano.data import tokenizer

    family = FAMILIES[cfg.mlp]
    hf_weights = to_hf(weights, cfg)
    config = AutoConfig.for_model(family.model_type, architectures=[family.architecture], **hf_config(cfg))
    config.dtype = str(hf_weights["lm_head.weight"].dtype)
    config.save_pretrained(folder)
    GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0).save_pretrained(folder)
    _save_safetensors(hf_weights, folder / WEIGHTS, {"format": "pt"})
    if cfg.vocab_size == tokenizer.VOCAB_SIZE:
        write_tokenizer(folder, cfg)


def card_text(value) -> str:
    """`value` as inert Markdown text on one line: no control characters (no new heading or row), `|` escaped
    (no new cell), `<`, `>` and `&` as HTML entities (no tags); names and figures come from files a stranger may
    have written."""
    text = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in str(value))
    return html.escape(text, quote=False).replace("|", "\\|")


def _figure(value, spec: str) -> str:
    """A number formatted by `spec`; anything else a summary may hold, as inert text."""
    return format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else card_text(value)


def _row(label: str, value) -> str:
    return f"| {label} | {card_text(value)} |"


def model_card(cfg: ModelConfig, weights: dict, summary: dict | None, source: str, has_tokenizer: bool) -> str:
    """README.md of the folder: what the model is, the run's figures (from its summary), how to load it."""
    family = FAMILIES[cfg.mlp]
    kind = "151M family: SwiGLU MLP" if cfg.mlp == "swiglu" else "88M family: squared-ReLU MLP"
    rows = [_row("Model", f"{cfg.name} ({kind}; d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, "
                          f"{cfg.n_kv_heads} KV heads, d_ff {cfg.d_ff}, vocabulary {cfg.vocab_size}, context "
                          f"{cfg.max_seq_len})"),
            _row("Weights from", source), _row("weights_sha256", exported_sha256(weights))]
    if summary is not None:
        eligible = "yes" if summary.get("eligible") else "no"
        rows += [_row("Track", summary.get("track")), _row("Framework", summary.get("framework")),
                 _row("Device", summary.get("device")), _row("Steps", _figure(summary.get("steps"), ",")),
                 _row("Tokens", _figure(summary.get("tokens"), ",")),
                 _row("Active Training Time", summary.get("active_time")),
                 _row("Validation loss", _figure(summary.get("val_loss"), ".6f")),
                 _row("Run weights_sha256", summary.get("weights_sha256")),
                 _row("data_sha256", summary.get("data_sha256")),
                 _row("Parameters", _figure(summary.get("params"), ",")),
                 _row("Eligible for the leaderboard", eligible),
                 _row("Date", summary.get("date")), _row("Commit", summary.get("commit"))]
    tokenizer_note = ("The tokenizer is SmolLM2-135M's (49,152 tokens), `<|endoftext|>` (id 0) ends a document."
                      if has_tokenizer else
                      f"No tokenizer is included: the model's {cfg.vocab_size}-token vocabulary is not SmolLM2's.")
    return "\n".join([
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- jax-nano",
        "- blueberry-nano", "---", "", f"# {card_text(summary.get('run') if summary else cfg.name)}", "",
        f"A Blueberry-Nano language model trained with jax-nano, exported as the stock transformers class "
        f"`{family.architecture}` (no custom code). {tokenizer_note}", "",
        "| Figure | Value |", "|---|---|", *rows, "",
        "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        'ids = tokenizer("The history of", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**ids, max_new_tokens=30, do_sample=False)[0]))", "```", "",
        "## Same function, other layout", "",
        "The model's RoPE turns interleaved pairs; here the rows of every q and k head (and the q/k norm weights) "
        "are reordered to transformers' halves. Its input embedding, tied to the head and scaled by sqrt(d_model), "
        "is stored untied and already scaled (`tie_word_embeddings: false`). RMSNorm's eps is float32's machine "
        "epsilon. jax-nano reads the folder back exactly (`scripts/generate.py --model-dir`, "
        "`scripts/speedrun.py --init-from`).", ""])


def export(weights: dict, cfg: ModelConfig, out, fmt: str, *, force=False, summary=None, source="",
           metrics=None, step=0) -> Path:
    """`weights` (upstream's names, numpy arrays) as `fmt` in the folder `out` (created; a non-empty one only with
    `force`), all or nothing. `summary`: the run's (results/RUN.json) for the model card; `metrics` and `step`
    go into upstream's model.pt. Returns `out`."""
    check_format(fmt)
    out = check_out(out, force)
    with claimed(out, force), staged(out) as folder:
        if fmt == "hf":
            write_hf(folder, weights, cfg)
            card = model_card(cfg, weights, summary, source, (folder / "tokenizer.json").is_file())
            (folder / CARD).write_text(card, encoding="utf-8")
        elif fmt == "safetensors":
            write_safetensors(folder, weights, cfg)
        else:
            from jax_nano.interop.export import export_torch

            export_torch(weights, folder / "model.pt", "upstream", cfg=cfg, metrics=metrics or {}, step=step)
    return out


def exported_sha256(weights: dict) -> str:
    """The `weights_sha256` of the weights as both trainers report it (upstream's names, the tied head included)."""
    return weights_sha256({"lm_head.weight": weights["token_embedding.weight"], **weights})
